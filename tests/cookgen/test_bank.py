"""`cookgen bank`: frame banks for the retrieval renderer — sampling, resume, bad input, config resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from auteur.bank import BANK_FILE, BANK_FORMAT, load_bank
from auteur.config import save_config
from auteur.errors import ConfigError
from auteur.video import write_mp4
from cookgen.bank import BankConfig, clip_key, find_clips, load_bank_config, sample_times
from cookgen.cli import main

FAST = ["--config", "tiny", "--no-progress", "max_side=64"]  # the tiny random open_clip space, small frames


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread per test (the toy encoder is tiny; OpenMP hand-off dominates on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_clips(root: Path, n_dishes: int = 2, steps: int = 3) -> Path:
    """Synthetic step clips <Dish>/<k>.mp4 (1 s at 8 fps, a slowly changing colour) plus a text file each."""
    rng = np.random.default_rng(0)
    for d in range(n_dishes):
        folder = root / f"Dish_{d}"
        folder.mkdir(parents=True)
        for k in range(1, steps + 1):
            base = rng.integers(0, 255, size=3)
            frames = [np.broadcast_to((base + 9 * i) % 256, (32, 32, 3)).astype(np.uint8) for i in range(8)]
            write_mp4(frames, folder / f"{k}.mp4", fps=8)
        (folder / "actions.yaml").write_text("1: chop\n")
    return root


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("clips"))


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sample_times_and_clip_keys():
    assert sample_times(1.0, 0.25) == [0.0, 0.25, 0.5, 0.75]
    assert sample_times(0.1, 1.0) == [0.0]  # a clip shorter than the interval still gives one frame
    assert sample_times(2.0, 1.5) == [0.0]
    assert clip_key(Path("A b/1.mp4")) != clip_key(Path("A_b/1.mp4"))  # same slug, different clips
    assert clip_key(Path("A b/1.mp4")).startswith("A_b_1-")


def test_bank_build_then_resume_skips_finished_clips(clips: Path, tmp_path: Path, capsys):
    out = tmp_path / "bank"
    argv = ["bank", clips, "--out", out, "--interval", "0.25", *FAST]
    rc, text, err = run(argv, capsys)
    assert rc == 0, err
    assert "frame bank: 24 frames from 6 clips" in text  # 6 one-second clips, every 0.25 s
    meta = json.loads((out / BANK_FILE).read_text())
    assert meta["format"] == BANK_FORMAT and meta["interval"] == 0.25 and meta["skipped"] == []
    assert [f["time"] for f in meta["frames"][:4]] == [0.0, 0.25, 0.5, 0.75]
    assert [f["source"] for f in meta["frames"][::4]] == [f"Dish_{d}/{k}.mp4" for d in (0, 1) for k in (1, 2, 3)]
    assert all((out / f["image"]).is_file() for f in meta["frames"])
    assert max(load_bank(out).image(0).size) <= 64
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["interval"] == 0.25 and cfg["max_side"] == 64 and cfg["vision"]["backend"] == "open_clip_json"
    bank = load_bank(out)
    assert bank.embeddings.shape == (24, 32) and bank.embeddings.dtype == torch.float32
    assert "random" in bank.space.name  # the tiny space says it is random (test data only)
    # a rerun skips every finished clip
    stamp = {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json")}
    assert run(argv, capsys)[0] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json")} == stamp
    # a kill during clip 4 leaves its work record unwritten: only that clip is redone, the bank comes out the same
    lost = out / "work" / f"{clip_key(Path('Dish_1/1.mp4'))}.json"
    lost.unlink()
    (out / BANK_FILE).unlink()
    assert run(argv, capsys)[0] == 0
    assert lost.is_file() and lost.stat().st_mtime_ns not in stamp.values()
    assert {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json") if p != lost} == {
        p: t for p, t in stamp.items() if p != lost
    }
    again = load_bank(out)
    assert again.frames == bank.frames and torch.equal(again.embeddings, bank.embeddings)


def test_bad_clips_are_skipped_and_listed(tmp_path: Path, capsys):
    root = write_clips(tmp_path / "clips", n_dishes=1, steps=2)
    (root / "Dish_0" / "broken.mp4").write_bytes(b"not a video at all")
    rc, text, err = run(["bank", root, "--out", tmp_path / "bank", "--interval", "0.5", *FAST], capsys)
    assert rc == 0, err
    assert "frame bank: 4 frames from 2 clips" in text
    assert "; 1 unreadable clip skipped (listed in" in text  # the closing summary counts what was skipped
    meta = json.loads((tmp_path / "bank" / BANK_FILE).read_text())
    assert [s["clip"] for s in meta["skipped"]] == ["Dish_0/broken.mp4"] and meta["num_clips"] == 2


def test_bad_input_one_line_exit_2_nothing_written(clips: Path, tmp_path: Path, capsys):
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "notes.txt").write_text("no clips here")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"garbage")
    cases = [
        ([tmp_path / "missing"], "clips folder not found"),
        ([only_text], "no video clips (.mp4"),
        ([broken], "no clip under"),
        ([clips, "--interval", "0"], "interval must be > 0"),
        ([clips, "max_side=0"], "max_side must be >= 1"),
        ([clips, "no_such_key=1"], "unknown config key 'no_such_key'"),
        ([clips, "--config", "nope"], "unknown preset 'nope'"),
        ([clips, "--bogus"], "unrecognized arguments: --bogus"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        rc, _, err = run(["bank", "--out", out, "--config", "tiny", "--no-progress", *extra], capsys)
        assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, (extra, err)
        assert not out.exists(), extra
    # an existing bank is only resumed with the settings it was sampled with
    out = tmp_path / "bank"
    assert run(["bank", clips, "--out", out, "--interval", "0.5", *FAST], capsys)[0] == 0
    before = (out / BANK_FILE).read_bytes()
    rc, _, err = run(["bank", clips, "--out", out, "--interval", "0.25", *FAST], capsys)
    assert rc == 2 and "was built with interval 0.5 (now 0.25)" in err and err.count("\n") == 1
    assert (out / BANK_FILE).read_bytes() == before
    # key=value after the options goes to the commands that take overrides; stats takes none
    rc, _, err = run(["stats", tmp_path, "x=1"], capsys)
    assert rc == 2 and "unrecognized arguments: x=1" in err


def test_config_from_cookgen_presets_and_bank_yaml(tmp_path: Path):
    tiny = load_bank_config("tiny", ["interval=2", "max_side=100"])
    assert tiny.vision.backend == "open_clip_json" and tiny.interval == 2.0 and tiny.max_side == 100
    default = load_bank_config("default")
    assert default.vision.backend == "efficientnet_lite0" and default == BankConfig(vision=default.vision)
    assert load_bank_config("paper").vision.backend == "open_clip"
    save_config(tiny, tmp_path)  # a bank's own config.yaml rebuilds it
    assert load_bank_config(tmp_path / "config.yaml") == tiny
    (tmp_path / "typo.yaml").write_text("vision:\n  backend: efficientnet_lite0\nkeyframe:\n  max_side: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'keyframe'"):
        load_bank_config(tmp_path / "typo.yaml")
    (tmp_path / "build.yaml").write_text("keyframes:\n  max_side: 3\ninterval: 0.5\n")  # build keys: checked, unused
    cfg = load_bank_config(tmp_path / "build.yaml")
    assert cfg.interval == 0.5 and cfg.max_side == 320


def test_demo_folder_every_clip_is_found():
    """The demo folder holds 59 files: 43 step clips (.mp4) and 16 text files (actions/captions YAML, order.txt,
    the per-dish .txt, captions.csv); `cookgen bank` must read every clip, and only clips."""
    demos = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "videoauteur_demos"
    if not demos.is_dir():
        pytest.skip("../shared/data not found (the VideoAuteur demo clips)")
    files = [p for p in demos.rglob("*") if p.is_file()]
    clips = find_clips(demos, BankConfig().extensions)
    assert len(clips) == len([p for p in files if p.suffix == ".mp4"]) == 43
    assert {p.suffix for p in files} - {p.suffix for p in clips} == {".yaml", ".txt", ".csv"}


def test_bank_texts_from_the_yaml_beside_the_clips_and_added_to_an_older_bank(clips: Path, tmp_path: Path, capsys):
    """Each frame carries its source step's text (actions.yaml / captions.yaml beside the clip), embedded once with
    MiniLM; a bank built without texts loads as before, and rerunning `cookgen bank` adds them without new decoding."""
    from auteur.bank import TEXT_EMB_FILE, BankError
    from auteur.sentence import TEXT_SPACE, load_sentence_encoder

    out = tmp_path / "bank"
    argv = ["bank", clips, "--out", out, "--interval", "0.5", *FAST]
    assert run([*argv, "texts=false"], capsys)[0] == 0  # as a bank from before step texts
    old = load_bank(out)
    assert not old.has_texts and old.texts == [] and old.text_embeddings is None
    assert "texts" not in json.loads((out / BANK_FILE).read_text()) and not (out / TEXT_EMB_FILE).exists()
    stamp = {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json")}
    assert run(argv, capsys)[0] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "work").glob("*.json")} == stamp  # no clip decoded again
    bank = load_bank(out)
    assert bank.has_texts and bank.text_space == TEXT_SPACE and torch.equal(bank.embeddings, old.embeddings)
    # only step 1 of each dish has an action ("1: chop"), and no captions.yaml
    assert bank.texts == [
        {"source": f"Dish_{d}/1.mp4", "action": "chop", "caption": "", "origin": "yaml"} for d in (0, 1)
    ]
    for f in bank.frames:
        assert f.get("text") == ({"Dish_0/1.mp4": 0, "Dish_1/1.mp4": 1}.get(f["source"]))
    assert bank.text_index().tolist() == [f.get("text", -1) for f in bank.frames]
    want = load_sentence_encoder().encode(["chop", "chop"])
    assert bank.text_embeddings.shape == (2, 384) and torch.allclose(bank.text_embeddings, want, atol=1e-6)
    # a broken text index or a missing text embeddings file is one line
    meta = json.loads((out / BANK_FILE).read_text())
    meta["frames"][0]["text"] = 7
    (out / BANK_FILE).write_text(json.dumps(meta))
    with pytest.raises(BankError, match="not an index into its 2 texts"):
        load_bank(out)
    meta["frames"][0]["text"] = 0
    (out / BANK_FILE).write_text(json.dumps(meta))
    (out / TEXT_EMB_FILE).unlink()
    with pytest.raises(BankError, match="text_embeddings.safetensors has no readable"):
        load_bank(out)


def test_bank_texts_from_a_cookgen_build(tmp_path: Path, capsys):
    """A bank built from a CookGen build (its folder or its clips/ folder) takes each clip's row: action, caption."""
    from tests.renderer.conftest import ACTIONS
    from tests.renderer.conftest import write_clips as write_step_clips

    root = write_step_clips(tmp_path / "steps", n_dishes=1, steps=3)
    build = tmp_path / "build"
    argv = ["build", "steps", "--root", root, "--out", build, "--split", "train", "--config", "tiny", "--no-progress",
            "filter.min_clip_seconds=0.5"]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    for clips_dir in (build, build / "clips"):
        out = tmp_path / f"bank-{clips_dir.name}"
        assert run(["bank", clips_dir, "--out", out, "--interval", "0.5", *FAST], capsys)[0] == 0
        bank = load_bank(out)
        assert [t["origin"] for t in bank.texts] == ["cookgen"] * 3
        assert [t["action"] for t in bank.texts] == ACTIONS[:3]
        assert all(t["caption"].endswith(a.lower()) for t, a in zip(bank.texts, ACTIONS))
        assert all("text" in f for f in bank.frames)
