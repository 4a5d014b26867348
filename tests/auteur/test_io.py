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


WRITER = """
import sys, time
from pathlib import Path
from auteur.io import atomic_dir
target, name, n, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
for i in range(n):
    with atomic_dir(target) as tmp:
        for k in range(3):
            (tmp / f"{name}{k}").write_text(str(i))
"""


def _one_writers_output(target: Path, names: list[str]) -> bool:
    files = sorted(p.name for p in target.iterdir())
    return any(files == [f"{n}{k}" for k in range(3)] for n in names)


def test_two_processes_replacing_one_folder_never_fail_or_mix(tmp_path: Path) -> None:
    """200 synchronised pairs of atomic_dir swaps of one folder (the race that raised FileNotFoundError / OSError
    in 48 of 200 before the swap lock): every swap succeeds, the folder is always one writer's whole output."""
    import subprocess
    import sys

    target, go = tmp_path / "plan", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), name, "200", str(go)],
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]  # fmt: skip
    go.touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert _one_writers_output(target, ["a", "b"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "plan"]  # no temporaries, no lock file left


def test_threads_replacing_one_folder_never_fail_or_mix(tmp_path: Path) -> None:
    import threading

    target, failures = tmp_path / "split", []

    def write(name: str) -> None:
        try:
            for i in range(50):
                with atomic_dir(target) as tmp:
                    for k in range(3):
                        (tmp / f"{name}{k}").write_text(str(i))
        except Exception as e:  # collected: an assertion in a thread would not fail the test
            failures.append(repr(e))

    threads = [threading.Thread(target=write, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert _one_writers_output(target, ["a", "b", "c"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


def test_a_second_writer_of_one_folder_fails_in_one_line(tmp_path: Path) -> None:
    from auteur.io import writer_lock

    out = tmp_path / "runs" / "plan"
    with writer_lock(out):
        with pytest.raises(AuteurError, match="being written by another process"):
            with writer_lock(out):
                pass
    with writer_lock(out):  # released: the next writer gets it
        pass
    assert not (tmp_path / "runs").exists()  # the lock file goes with the lock, and the folder made for it
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AuteurError, match="cannot write there"):
        with writer_lock(blocker / "plan"):
            pass


SAVE = """
import sys, torch
from auteur.io import save_safetensors
save_safetensors({"b": torch.ones(2), "a": torch.zeros(3)}, sys.argv[1],
                 metadata={"space": "x", "dim": "3", "format": "f", "fingerprint": "0123"})
"""


def test_identical_safetensors_writes_are_identical_bytes(tmp_path: Path) -> None:
    """safetensors orders the metadata by a per-process hash seed; save_safetensors sorts it, so six processes
    writing the same tensors and metadata write the same bytes (and the file still loads)."""
    import hashlib
    import subprocess
    import sys

    from safetensors import safe_open

    paths = [tmp_path / f"{i}.safetensors" for i in range(6)]
    for p in paths:
        subprocess.run([sys.executable, "-c", SAVE, str(p)], check=True)
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == 1
    with safe_open(str(paths[0]), "pt") as f:
        assert f.metadata() == {"dim": "3", "fingerprint": "0123", "format": "f", "space": "x"}
        assert f.get_tensor("a").tolist() == [0.0, 0.0, 0.0]
