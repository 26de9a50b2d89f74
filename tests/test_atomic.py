"""hohoho_core.atomic: a destination is either its old contents or the complete new ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hohoho_core.atomic import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_bytes_and_text_create_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"  # missing parent folders are made
    assert atomic_write_bytes(target, b"one") == target
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    text = tmp_path / "a.json"
    atomic_write_text(text, '{"k": "\u00e9"}\n')
    assert text.read_bytes() == '{"k": "\u00e9"}\n'.encode()
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


@pytest.mark.parametrize("how", ["open", "path"])
def test_a_writer_that_raises_leaves_the_old_file_intact(tmp_path: Path, how: str) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old contents")

    with pytest.raises(OSError, match="disk full"):
        if how == "open":
            with atomic_open(target, "wb") as f:
                f.write(b"half of the new")
                raise OSError("disk full")
        else:
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"half of the new")
                raise OSError("disk full")

    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def test_a_failed_first_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "new.txt"
    with pytest.raises(KeyboardInterrupt), atomic_open(target, "w") as f:
        f.write("partial")
        raise KeyboardInterrupt  # BaseException too: a Ctrl-C mid-write
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_not_visible_before_the_writer_returns(tmp_path: Path) -> None:
    target = tmp_path / "a.npy"
    target.write_bytes(b"old")
    with atomic_open(target, "wb") as f:
        np.save(f, np.arange(3, dtype=np.int16), allow_pickle=False)
        assert target.read_bytes() == b"old"
        temps = _leftovers(tmp_path)
        assert len(temps) == 1 and temps[0].startswith(".a.npy.")  # hidden, beside the target
    np.testing.assert_array_equal(np.load(target), np.arange(3, dtype=np.int16))
    assert _leftovers(tmp_path) == []


def test_atomic_path_hands_a_file_name_to_name_based_writers(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    target = tmp_path / "t.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp") and tmp.exists()
        assert not target.exists()
        save_file({"x": np.ones(2, np.float32)}, str(tmp))
    np.testing.assert_array_equal(load_file(str(target))["x"], np.ones(2, np.float32))
    assert _leftovers(tmp_path) == []


def test_permissions_follow_the_umask_like_a_plain_write(tmp_path: Path) -> None:
    # tempfile.mkstemp would make 0o600 files, unreadable to a server running as another user
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    atomic_write_bytes(tmp_path / "a", b"x")
    with atomic_path(tmp_path / "b") as tmp:
        tmp.write_bytes(b"x")
    mode = os.stat(plain).st_mode & 0o777
    assert os.stat(tmp_path / "a").st_mode & 0o777 == mode
    assert os.stat(tmp_path / "b").st_mode & 0o777 == mode


def test_only_write_modes_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "a", "ab"):
        pass
    assert list(tmp_path.iterdir()) == []
