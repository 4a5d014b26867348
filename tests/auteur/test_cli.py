from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import load_file

from auteur.cli import main
from auteur.cliutil import run_cli
from auteur.errors import AuteurError
from auteur.plan import read_space, save_plan
from tests.auteur.test_plan import make_plan


def test_show_prints_a_valid_plan_and_rejects_a_broken_one(tmp_path: Path, capsys) -> None:
    save_plan(make_plan(), tmp_path / "p")
    assert main(["show", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "Plan: how to cook a tuna sandwich" in out and "\n2. action 2" in out and "keyframes/001.png" in out
    (tmp_path / "p" / "plan.json").write_text('{"query": "x"}')
    assert main(["show", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err == "error: plan.json: missing field 'steps'\n"


def test_embed_writes_embeddings_with_their_space(tmp_path: Path, capsys) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "e.safetensors"
    assert (
        main(["embed", *paths, "--out", str(out), "--backend", "open_clip_json", "--model-json", "tiny_open_clip"])
        == 0
    )
    emb = load_file(str(out))["embeddings"]
    space = read_space(out)
    assert emb.shape == (3, space.dim) and space.name.startswith("open_clip-random/tiny_open_clip/")
    assert not np.allclose(emb[0].numpy(), emb[2].numpy())
    capsys.readouterr()
    assert main(["embed", str(tmp_path / "nope.png"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert capsys.readouterr().err.startswith("error: image not found")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["embed", str(tmp_path / "bad.png"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_overrides_may_follow_options_and_anything_else_left_over_is_a_usage_error() -> None:
    import pytest

    from auteur.cliutil import ArgumentParser, UsageError, parse_with_overrides

    p = ArgumentParser(prog="tool")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    run = sub.add_parser("run")
    run.add_argument("query")
    run.add_argument("--steps", type=int)
    run.add_argument("overrides", nargs="*")
    sub.add_parser("list")
    args = parse_with_overrides(p, ["run", "soup", "a.b=1", "--steps", "3", "c=2", "d.e=[x,y]"])
    assert (args.query, args.steps, args.overrides) == ("soup", 3, ["a.b=1", "c=2", "d.e=[x,y]"])
    for argv, bad in [
        (["run", "soup", "--steps", "3", "stray"], "stray"),
        (["run", "soup", "--bogus=1"], "--bogus=1"),
        (["list", "a=1"], "a=1"),  # a command without overrides takes none
    ]:
        with pytest.raises(UsageError, match=f"tool: unrecognized arguments: {bad}"):
            parse_with_overrides(p, argv)


def test_an_error_line_reaches_stderr_in_one_write(monkeypatch) -> None:
    """Processes under torchrun share one stderr: a line written in two pieces (``print`` writes the text, then the
    newline, on Python's unbuffered stderr) can interleave with another process's line."""

    class Raw(io.RawIOBase):
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.writes.append(bytes(b))
            return len(b)

    raw = Raw()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, encoding="utf-8", write_through=True))

    def body() -> int:
        raise AuteurError("train.batch_size (3) must be a multiple of the number of processes (2)")

    assert run_cli(body) == 2
    assert raw.writes == [b"error: train.batch_size (3) must be a multiple of the number of processes (2)\n"]
