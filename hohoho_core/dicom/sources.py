"""Sources -> file entries: folders, files, uploads and zips, walked in a stable order.

A source is a folder (searched recursively), a file, a ``.zip``, an `Upload`, or a list
of paths and/or uploads. Zips are extracted (through `zipsafe.extract_zip`) into
temporary folders owned by the caller's ``ExitStack``, so they live as long as the scan.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from hohoho_core.dicom import zipsafe
from hohoho_core.dicom.zipsafe import GIB, MIB
from hohoho_core.study import LoadReport, SkipReason

__all__ = ["DEFAULT_MAX_TOTAL_UPLOAD_BYTES", "DEFAULT_MAX_UPLOAD_BYTES", "Upload"]

DEFAULT_MAX_UPLOAD_BYTES = 512 * MIB
DEFAULT_MAX_TOTAL_UPLOAD_BYTES = 2 * GIB


@dataclass(frozen=True)
class Upload:
    """An in-memory file, e.g. from a browser upload. ``name`` is shown in reports."""

    name: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class _Entry:
    """One file to read: on disk (``path``) or in memory (``data``)."""

    name: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        if self.data is not None:
            yield io.BytesIO(self.data)
        else:
            assert self.path is not None
            with open(self.path, "rb") as fh:
                yield fh

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size


@dataclass(frozen=True)
class _Limits:
    max_upload_bytes: int
    max_total_upload_bytes: int
    max_zip_bytes: int
    max_members: int


def _natural_key(name: str) -> list[Any]:
    """'IM2' before 'IM10'. re.split with a group alternates text and digits."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _walk(folder: Path, report: LoadReport, prefix: str = "") -> list[_Entry]:
    """Every regular file under ``folder``, recursively, in natural name order.

    Only regular files that resolve inside ``folder`` are returned: a symbolic link that
    leads out of it, or to anything but a regular file, and special files (named pipes,
    devices, sockets) are listed in ``report`` and never opened (opening a named pipe
    blocks). Symbolic links to folders are not followed. The file type comes from the
    directory listing, so regular files cost no extra system call.
    """
    root = folder.resolve()
    entries: list[_Entry] = []

    def name_of(path: Path) -> str:
        return f"{prefix}{path.relative_to(folder).as_posix()}"

    def skip(path: Path, reason: SkipReason, detail: str) -> None:
        report.files_seen += 1
        report.skip(name_of(path), reason, detail)

    def visit(base: Path) -> None:
        try:
            with os.scandir(base) as it:
                listing = sorted(it, key=lambda e: _natural_key(e.name))
        except OSError as exc:
            if base == folder:
                raise
            skip(base, SkipReason.UNREADABLE, f"folder could not be listed ({type(exc).__name__})")
            return
        subdirs = []
        for item in listing:
            path = base / item.name
            try:
                if item.is_dir(follow_symlinks=False):
                    subdirs.append(path)
                    continue
                if item.is_file(follow_symlinks=False):
                    entries.append(_Entry(name=name_of(path), path=path))
                    continue
                if item.is_symlink():
                    why = _link_problem(path, root)
                    if why is None:
                        entries.append(_Entry(name=name_of(path), path=path))
                    elif why[0] is not None:
                        skip(path, why[0], why[1])
                    continue
                mode = item.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                skip(path, SkipReason.UNREADABLE, f"could not be examined ({type(exc).__name__})")
                continue
            skip(path, SkipReason.NOT_REGULAR_FILE, f"{_file_kind(mode)}, not opened")
        for sub in subdirs:
            visit(sub)

    visit(folder)
    return entries


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _link_problem(path: Path, root: Path) -> tuple[SkipReason | None, str] | None:
    """None when the link at ``path`` leads to a regular file inside ``root``; else why not.

    ``(None, ...)``: a link to a folder, left out silently as folder links always were.
    """
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        return SkipReason.UNREADABLE, f"broken symbolic link ({type(exc).__name__})"
    if not target.is_relative_to(root):
        return SkipReason.OUTSIDE_FOLDER, "symbolic link to a file outside the folder, not opened"
    mode = target.stat().st_mode
    if stat.S_ISDIR(mode):
        return None, "link to a folder"
    if not stat.S_ISREG(mode):
        return SkipReason.NOT_REGULAR_FILE, f"symbolic link to a {_file_kind(mode)}, not opened"
    return None


def _is_zip_name(name: str, head: bytes) -> bool:
    return name.lower().endswith(".zip") or head.startswith(b"PK\x03\x04")


def _collect(
    source: Any, stack: contextlib.ExitStack, report: LoadReport, limits: _Limits
) -> list[_Entry]:
    """Expand a source into file entries; zips are extracted into temporary folders."""
    if isinstance(source, Upload):
        source = [source]
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if not isinstance(source, Iterable):
        raise TypeError(f"unsupported study source type {type(source).__name__}")

    items = list(source)
    entries: list[_Entry] = []
    upload_total = 0
    for item in items:
        if isinstance(item, Upload):
            size = len(item.data)
            if size > limits.max_upload_bytes:
                report.files_seen += 1
                report.skip(
                    item.name,
                    SkipReason.TOO_LARGE,
                    f"{size} bytes; the limit per upload is {limits.max_upload_bytes}",
                )
                continue
            if upload_total + size > limits.max_total_upload_bytes:
                report.files_seen += 1
                report.skip(
                    item.name,
                    SkipReason.TOO_LARGE,
                    f"uploads exceed the total limit of {limits.max_total_upload_bytes} bytes",
                )
                continue
            upload_total += size
            if _is_zip_name(item.name, item.data[:4]):
                entries.extend(_collect_zip(item.data, item.name, stack, report, limits))
            else:
                entries.append(_Entry(name=item.name, data=item.data))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"unsupported study source item type {type(item).__name__}")
        path = Path(item)
        if path.is_dir():
            # Names stay relative to a single folder; several sources keep their folder name.
            entries.extend(_walk(path, report, "" if len(items) == 1 else f"{path.name}/"))
        elif path.is_file():
            with open(path, "rb") as fh:
                head = fh.read(4)
            if _is_zip_name(path.name, head):
                entries.extend(_collect_zip(path, path.name, stack, report, limits))
            else:
                entries.append(_Entry(name=path.name, path=path))
        elif path.exists():
            report.files_seen += 1
            report.skip(
                path.name,
                SkipReason.NOT_REGULAR_FILE,
                f"{_file_kind(path.stat().st_mode)}, not opened",
            )
        else:
            report.files_seen += 1
            report.skip(path.name, SkipReason.UNREADABLE, "no such file or folder")
    return entries


def _collect_zip(
    archive: Path | bytes,
    name: str,
    stack: contextlib.ExitStack,
    report: LoadReport,
    limits: _Limits,
) -> list[_Entry]:
    target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hohoho_zip_")))
    # Looked up on the module so that tests can count extractions.
    paths, zip_report = zipsafe.extract_zip(
        archive,
        target,
        max_total_bytes=limits.max_zip_bytes,
        max_members=limits.max_members,
        name=name,
    )
    report.files_seen += zip_report.files_seen - len(paths)  # extracted ones are counted later
    report.skipped.extend(zip_report.skipped)
    report.warnings.extend(zip_report.warnings)
    return [_Entry(name=f"{name}:{p.relative_to(target).as_posix()}", path=p) for p in paths]
