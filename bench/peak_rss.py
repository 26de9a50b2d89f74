"""Run a command and write its own peak resident set, free of the process that started it.

``python bench/peak_rss.py OUT CMD...`` runs CMD (stdout, stderr and exit status passed
through) and writes its ``ru_maxrss`` (KiB) to OUT. Why a launcher: when a process calls
exec, Linux keeps the resident high-water mark of the memory image it leaves as the new
program's starting ``ru_maxrss``, so a command started straight from a large process
reports that process's size as its own peak (a child of a 3 GiB Python process running
``/bin/true`` reports 3 GiB). Started from this small process, the command's figure is
its own. Run as a script, not ``-m``, so that nothing else is imported first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: peak_rss.py OUT CMD...", file=sys.stderr)
        return 2
    out, cmd = Path(argv[0]), argv[1:]
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    out.write_text(str(usage.ru_maxrss), encoding="utf-8")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
