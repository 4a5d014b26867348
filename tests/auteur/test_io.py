from __future__ import annotations

from pathlib import Path

import pytest

from auteur.errors import AuteurError
from auteur.io import atomic_dir, atomic_path, atomic_write_json, clean_stale_temporaries, ensure_writable_dir


def test_atomic_path_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_replaces_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "split"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "y").write_text("2")
    assert [p.name for p in target.iterdir()] == ["y"]
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "z").write_text("3")
            raise ValueError
    assert [p.name for p in target.iterdir()] == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


def test_stale_temporaries_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".a.json.tmp-123.json").write_text("half")
    (tmp_path / ".split.tmp-9").mkdir()
    (tmp_path / "keep.json").write_text("{}")
    assert clean_stale_temporaries(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_unwritable_dir_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AuteurError, match="not writable"):
        ensure_writable_dir(blocker / "sub")
