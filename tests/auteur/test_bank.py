"""The frame-bank format (auteur.bank): what load_bank accepts, and one clear BankError for everything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from auteur.bank import BANK_FILE, BANK_FORMAT, EMB_FILE, BankError, is_bank, load_bank
from auteur.errors import AuteurError
from auteur.plan import VisualSpace

SPACE = VisualSpace("test/space", 4)


def write_bank(folder: Path, n: int = 3, fmt: str = BANK_FORMAT, space: VisualSpace = SPACE) -> Path:
    """A hand-written bank of ``n`` frames (test data: solid colours, random embeddings [n, 4])."""
    (folder / "frames").mkdir(parents=True)
    frames = []
    for i in range(n):
        Image.new("RGB", (8, 6), (40 * i, 0, 0)).save(folder / "frames" / f"{i}.png")
        frames.append({"image": f"frames/{i}.png", "source": "a.mp4", "time": float(i)})
    emb = torch.randn(n, space.dim, generator=torch.Generator().manual_seed(0))
    save_file({"embeddings": emb}, str(folder / EMB_FILE), {"space": space.name, "dim": str(space.dim)})
    (folder / BANK_FILE).write_text(json.dumps({"format": fmt, "space": space.to_json(), "frames": frames}))
    return folder


def test_load_bank_reads_both_format_names(tmp_path: Path):
    for fmt in (BANK_FORMAT, "renderer.bank/1"):  # banks written before the builder moved to cookgen still load
        bank = load_bank(write_bank(tmp_path / fmt.replace("/", "_"), fmt=fmt))
        assert bank.space == SPACE and bank.embeddings.shape == (3, 4) and len(bank.frames) == 3
        assert bank.image(2).getpixel((0, 0)) == (80, 0, 0) and bank.image(2).size == (8, 6)


def _rewrite(folder: Path, **changes) -> None:
    meta = json.loads((folder / BANK_FILE).read_text())
    meta.update(changes)
    (folder / BANK_FILE).write_text(json.dumps(meta))


def test_bad_banks_raise_one_line_bank_errors(tmp_path: Path):
    def fails(folder, message):
        with pytest.raises(BankError) as e:
            load_bank(folder)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)

    fails(None, "frame bank not found: none given; build one with `cookgen bank CLIPS_DIR --out BANK`")
    fails(tmp_path / "nowhere", "has no bank.json; build one with `cookgen bank")
    assert not is_bank(tmp_path / "nowhere") and not is_bank("")
    b = write_bank(tmp_path / "b")
    assert is_bank(b)
    (b / BANK_FILE).write_text("{not json")
    fails(b, "is not valid JSON")
    cases = [
        ({"format": "someone.else/9"}, "format 'someone.else/9' is not one this version reads"),
        ({"space": "efficientnet"}, "'space' must be an object"),
        ({"frames": [{"source": "a.mp4"}]}, "'frames' must be a list of records with an 'image' path"),
        ({"frames": [{"image": "frames/0.png"}]}, "(3, 4) embeddings for 1 frames"),
        ({"space": {"name": "other/space", "dim": 4}}, "visual space test/space (dim 4) but other/space"),
    ]
    for i, (change, message) in enumerate(cases):
        folder = write_bank(tmp_path / f"c{i}")
        _rewrite(folder, **change)
        fails(folder, message)
    folder = write_bank(tmp_path / "noemb")
    (folder / EMB_FILE).unlink()
    fails(folder, "embeddings.safetensors is missing")
    folder = write_bank(tmp_path / "corrupt")
    (folder / EMB_FILE).write_bytes(b"\x00" * 20)
    fails(folder, "is not a readable safetensors file")
    folder = write_bank(tmp_path / "noimage")
    (folder / "frames" / "1.png").unlink()
    with pytest.raises(BankError, match="frame 1 \\(1.png\\) is missing or unreadable"):
        load_bank(folder).image(1)
    assert issubclass(BankError, AuteurError)  # the CLIs turn it into `error: ...` and exit code 2
