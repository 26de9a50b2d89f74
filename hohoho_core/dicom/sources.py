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


def _walk(folder: Path, prefix: str = "") -> list[_Entry]:
    """Every regular file under ``folder``, recursively (symlinked folders not followed)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort(key=_natural_key)
        base = Path(dirpath)
        for fname in sorted(filenames, key=_natural_key):
            path = base / fname
            rel = path.relative_to(folder).as_posix()
            entries.append(_Entry(name=f"{prefix}{rel}", path=path))
    return entries


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
            entries.extend(_walk(path, "" if len(items) == 1 else f"{path.name}/"))
        elif path.is_file():
            with open(path, "rb") as fh:
                head = fh.read(4)
            if _is_zip_name(path.name, head):
                entries.extend(_collect_zip(path, path.name, stack, report, limits))
            else:
                entries.append(_Entry(name=path.name, path=path))
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
