"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Every writer goes through a hidden temporary file in the destination's own folder (so the
final ``os.replace`` is a rename within one file system, which POSIX makes atomic), is
flushed to disk, and is renamed over the destination only when the writer returned. If the
writer raises, the temporary file is removed and the old destination is left untouched.

Temporary names look like ``.<name>.<random>.tmp``: hidden, and never matching a glob such
as ``*.npy``, so a reader that lists a folder does not pick up the leftovers of a killed
process.

- ``atomic_write_bytes(path, data)`` / ``atomic_write_text(path, text)``: whole contents.
- ``atomic_open(path, mode="wb")``: a file object for writers that take one (``np.save(f)``).
- ``atomic_path(path)``: a temporary *path* for writers that want a file name
  (``safetensors.torch.save_file``, ``DataFrame.to_parquet``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text"]


def _reserve_temp(path: Path) -> tuple[int, Path]:
    """Create an empty hidden temp file beside ``path``; return its descriptor and path.

    ``O_EXCL`` with mode 0o666 (not ``tempfile.mkstemp``'s 0o600) so the final file gets the
    usual umask permissions, like a plain ``open(path, "w")`` would give it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return fd, tmp


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    The temporary file exists (empty) when yielded, so the writer overwrites it. Its name
    ends in ``.tmp``, so a writer that appends its own extension to such a name (``np.save``
    adds ``.npy``, ``np.savez`` adds ``.npz``) must get a file object from ``atomic_open``.
    On any exception the temporary file is removed and ``path`` keeps its old contents.
    """
    dest = Path(path)
    fd, tmp = _reserve_temp(dest)
    os.close(fd)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text: ``encoding`` defaults to UTF-8). On any exception
    the temporary file is removed and ``path`` keeps its old contents.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'wb' or 'w', not {mode!r}")
    dest = Path(path)
    fd, tmp = _reserve_temp(dest)
    try:
        if mode == "w":
            f: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation); return ``path``."""
    with atomic_open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return Path(path)
