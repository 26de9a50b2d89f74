"""results.json <-> results.md: merge a run into the stored results and render the tables."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.common import machine_line

__all__ = ["SECTION_ORDER", "fmt", "merge", "render_markdown", "write_results"]

#: Report order of the sections (``--only`` names).
SECTION_ORDER: tuple[str, ...] = ("study", "preprocess", "saliency", "tsne", "train", "app")


def fmt(value: Any) -> str:
    """A figure for a table: 3 significant digits, thousands separated, '-' when missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        v = float(value)
        if not math.isfinite(v):
            return "-"
        if v == 0:
            return "0"
        if abs(v) < 1e-2:
            return f"{v:.1e}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
        return f"{v:.{digits}f}"
    return str(value)


def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Stored results with ``new``'s sections replacing the same names (``--only`` reruns)."""
    out = dict(new)
    sections = dict((old or {}).get("sections", {}))
    sections.update(new.get("sections", {}))
    out["sections"] = {k: sections[k] for k in SECTION_ORDER if k in sections}
    out["sections"].update({k: v for k, v in sections.items() if k not in SECTION_ORDER})
    return out


def _goal_text(g: dict[str, Any]) -> tuple[str, str]:
    target = f"{g['op']} {fmt(g['limit'])} {g.get('unit', '')}".strip()
    measured = f"{fmt(g['measured'])} {g.get('unit', '')}".strip()
    return target, measured


def _status(met: bool | None) -> str:
    return "met" if met is True else ("NOT met" if met is False else "not measured")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict[str, Any]) -> str:
    """results.md: machine line, command, goals summary, then one table per section."""
    lines = ["# HOHOHO benchmarks", ""]
    lines.append(f"**Machine:** {machine_line(results['machine'])}")
    lines.append("")
    lines.append(f"**Made by:** `{results['command']}` on {results['created']} "
                 f"({results['threads']} torch threads everywhere).")
    if results.get("quick"):
        lines += ["", "> **--quick run:** tiny sizes for a smoke test; these figures mean "
                      "nothing about speed."]
    lines += ["", "Figures are medians of repeated runs after a warm-up, unless a row says "
                  "otherwise; every ratio divides figures measured in the same run.", ""]
    sections = results.get("sections", {})
    goals = [(sec, g) for sec in sections.values() for g in sec.get("goals", [])]
    if goals:
        lines += ["## Goals", "", "| section | goal | target | measured | status | cause |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for sec, g in goals:
            target, measured = _goal_text(g)
            lines.append(f"| {_cell(sec['title'])} | {_cell(g['what'])} | {target} | "
                         f"{measured} | {_status(g['met'])} | {_cell(g.get('cause') or '')} |")
        lines.append("")
    for sec in sections.values():
        lines += [f"## {sec['title']}", ""]
        if sec.get("created") and sec.get("created") != results.get("created"):
            lines += [f"_From an earlier run: `{sec.get('command', '?')}` on {sec['created']}._",
                      ""]
        for key, value in sec.get("params", {}).items():
            lines.append(f"- {key}: {_cell(value)}")
        if sec.get("params"):
            lines.append("")
        if sec.get("error"):
            lines += [f"**Failed:** {_cell(sec['error'])}", ""]
        if sec.get("rows"):
            lines += ["| what | value | unit | how |", "| --- | ---: | --- | --- |"]
            for r in sec["rows"]:
                lines.append(f"| {_cell(r['what'])} | {fmt(r['value'])} | {_cell(r['unit'])} | "
                             f"{_cell(r.get('detail', ''))} |")
            lines.append("")
        for g in sec.get("goals", []):
            target, measured = _goal_text(g)
            why = f" Cause: {g['cause']}." if g.get("cause") and g["met"] is not True else ""
            lines.append(f"- Goal: {g['what']} {target}: measured {measured}, "
                         f"**{_status(g['met'])}**.{why}")
        for note in sec.get("notes", []):
            lines.append(f"- Note: {note}")
        lines.append(f"- Section time: {fmt(sec.get('seconds'))} s")
        lines.append("")
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path, merge_existing: bool) -> dict[str, Any]:
    """Write ``results.json`` (merged with the stored one when asked) and ``results.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    old = None
    if merge_existing and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = None
    merged = merge(old, results)
    path.write_text(json.dumps(merged, indent=1, default=str) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(render_markdown(merged) + "\n", encoding="utf-8")
    return merged
