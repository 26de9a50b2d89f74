"""Safe zip extraction: the one place where archive member names touch the file system.

A security boundary of its own: members with absolute paths, ``..``, drive letters or
symlink/special-file modes are rejected, nothing is written outside the target folder,
and the total size is bounded by what the archive declares and by what is really written.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

from hohoho_core.study import LoadReport, SkippedFile, SkipReason

__all__ = ["DEFAULT_MAX_MEMBERS", "DEFAULT_MAX_ZIP_BYTES", "GIB", "MIB", "extract_zip"]

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_MAX_ZIP_BYTES = 2 * GIB
DEFAULT_MAX_MEMBERS = 10_000

_DRIVE = re.compile(r"^[A-Za-z]:")


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why an archive member must not be written, or None when it is safe."""
    name = info.filename
    if not name or "\x00" in name:
        return "empty or NUL in name"
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _DRIVE.match(name):
        return "drive letter"
    parts = re.split(r"[\\/]+", name)
    if any(p == ".." for p in parts):
        return "'..' in path"
    mode = (info.external_attr >> 16) & 0o170000
    if mode == stat.S_IFLNK:
        return "symbolic link"
    if mode and mode not in (stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    return None


def extract_zip(
    zip_path: str | os.PathLike[str] | bytes,
    target: str | os.PathLike[str],
    max_total_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    *,
    name: str | None = None,
) -> tuple[list[Path], LoadReport]:
    """Extract a zip (path or bytes) under ``target``, safely and within bounds.

    Members with absolute paths, ``..``, drive letters or symlink modes are rejected
    (UNSAFE_PATH) and nothing is written outside ``target``. The total uncompressed size
    is bounded twice: by the sizes the archive declares and by counting the bytes
    actually written, so a lying header cannot get past it (TOO_LARGE). Members past
    ``max_members`` are rejected too.

    Returns:
        The extracted file paths (in archive order) and a report of rejected members.
    """
    report = LoadReport()
    label = name or (Path(zip_path).name if not isinstance(zip_path, bytes) else "upload.zip")
    root = Path(target)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    written: list[Path] = []
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_path) if isinstance(zip_path, bytes) else zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        report.files_seen += 1
        report.skip(label, SkipReason.UNREADABLE, f"not a readable zip ({type(exc).__name__})")
        return written, report

    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        report.files_seen += len(members)
        if len(members) > max_members:
            report.skip(
                f"{label}: {len(members) - max_members} entries",
                SkipReason.TOO_LARGE,
                f"the archive holds {len(members)} files; the limit is {max_members}",
            )
            members = members[:max_members]
        total = 0
        seen: set[str] = set()
        for info in members:
            source = f"{label}:{info.filename}"
            why = _unsafe_member(info)
            if why is not None:
                report.skip(source, SkipReason.UNSAFE_PATH, why)
                continue
            rel = PurePosixPath(
                *[p for p in re.split(r"[\\/]+", info.filename) if p not in ("", ".")]
            )
            try:
                dest = (root / rel).resolve()
            except (OSError, RuntimeError, ValueError) as exc:
                report.skip(source, SkipReason.UNSAFE_PATH, _os_detail(exc))
                continue
            # Belt and braces: the name checks above should make this impossible.
            if not dest.is_relative_to(root) or dest == root:
                report.skip(source, SkipReason.UNSAFE_PATH, "resolves outside the target")
                continue
            key = rel.as_posix().lower()
            if key in seen:
                report.skip(source, SkipReason.DUPLICATE, "repeated archive entry")
                continue
            if info.file_size > max_total_bytes - total:
                report.skip(
                    source,
                    SkipReason.TOO_LARGE,
                    f"declares {info.file_size} bytes; {max_total_bytes - total} of "
                    f"{max_total_bytes} left",
                )
                continue
            result = _extract_member(zf, info, dest, max_total_bytes - total)
            if isinstance(result, SkippedFile):
                report.skip(source, result.reason, result.detail)
                continue
            seen.add(key)
            total += result
            written.append(dest)
    return written, report


def _extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int
) -> int | SkippedFile:
    """Copy one member to ``dest`` counting bytes; returns bytes written or why not.

    A member whose path the file system refuses (a folder where an earlier member is a
    file, a name too long, ...) is skipped alone: the rest of the archive still loads.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return SkippedFile("", SkipReason.UNSAFE_PATH, _os_detail(exc))
    count = 0
    limit = min(budget, info.file_size)
    failure: SkippedFile | None = None
    out_opened = False
    try:
        with zf.open(info) as src, open(dest, "xb") as out:
            out_opened = True
            while True:
                # Ask for one byte more than allowed so an overrun is seen, not trusted.
                chunk = src.read(min(MIB, limit - count + 1))
                if not chunk:
                    break
                count += len(chunk)
                if count > info.file_size:
                    failure = SkippedFile("", SkipReason.TOO_LARGE, "more data than declared")
                    break
                if count > budget:
                    failure = SkippedFile("", SkipReason.TOO_LARGE, "total size bound reached")
                    break
                out.write(chunk)
    except FileExistsError:
        if dest.is_dir():
            return SkippedFile("", SkipReason.UNSAFE_PATH, "a folder of that name is in the archive")
        return SkippedFile("", SkipReason.DUPLICATE, "repeated archive entry")
    except OSError as exc:
        if not out_opened:  # nothing written: a path the file system refuses
            return SkippedFile("", SkipReason.UNSAFE_PATH, _os_detail(exc))
        failure = SkippedFile(
            "", SkipReason.UNREADABLE, f"corrupt archive entry ({type(exc).__name__})"
        )
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        ValueError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        # RuntimeError: encrypted member; BadZipFile: bad CRC (lying sizes end here too).
        failure = SkippedFile(
            "", SkipReason.UNREADABLE, f"corrupt archive entry ({type(exc).__name__})"
        )
    if failure is not None:
        dest.unlink(missing_ok=True)
        return failure
    return count


def _os_detail(exc: BaseException) -> str:
    """Why the file system refused a member's path, without quoting the path."""
    code = getattr(exc, "errno", None)
    if code == errno.ENAMETOOLONG:
        return "name too long for the file system"
    if isinstance(exc, (FileExistsError, NotADirectoryError)) or code == errno.ENOTDIR:
        return "a file of the same name as one of its folders is in the archive"
    if isinstance(exc, IsADirectoryError):
        return "a folder of that name is in the archive"
    return f"the file system refused this path ({type(exc).__name__})"
