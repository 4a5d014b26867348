"""``videogen train`` in one process: samples and the latent cache, per-sample draws, the loss, checkpoints and
resume, bf16, gradient checkpointing, errors. Several processes (torchrun): ``test_distributed.py``."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import videogen.train as vt
from auteur.config import load_config
from auteur.plan import load_plan
from tests.videogen.conftest import plan_for_checkpoint
from videogen.cli import main
from videogen.config import PRESETS, VideogenConfig
from videogen.train import FrozenEncoders, SimulatedKill, VideogenTask, build_model, load_samples, train
from videogen.wan import WanGenerator, encode_prompts

CPU = torch.device("cpu")


def _cfg(data, out, *extra):
    return load_config(VideogenConfig, "tiny", [f"data={data}", f"out={out}", *extra], preset_dir=PRESETS)


def _task(cfg: VideogenConfig) -> VideogenTask:
    samples, space = load_samples(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return VideogenTask(cfg, samples, space, Path(cfg.out), progress=False)


def _encoded(run: Path, rank: int = 0) -> list[list[str]]:
    """The keys each fill of the run encoded on process ``rank`` (``train.trace_samples``), one list per run."""
    lines = (run / "trace" / f"encoded-rank-{rank}.jsonl").read_text().splitlines()
    return [json.loads(line)["encoded"] for line in lines]


def test_samples_name_their_files_and_the_cache_encodes_each_once(tiny_cookgen_clips, tmp_path, monkeypatch):
    cfg = _cfg(tiny_cookgen_clips, tmp_path / "run", "train.trace_samples=true")
    task = _task(cfg)
    assert len(task.samples) == 6 and len({s.key for s in task.samples}) == 6
    for s in task.samples:  # names, a caption and the embedding: no decoded pixels held in memory
        assert s.clip.is_file() and s.keyframe.is_file() and s.build == Path(tiny_cookgen_clips).resolve()
        assert s.caption.startswith("The cook does step") and s.embedding.shape == (32,)
        arrays = [getattr(s, f) for f in s.__slots__ if isinstance(getattr(s, f), np.ndarray | torch.Tensor)]
        assert sum(a.nbytes for a in arrays) == 32 * 4

    assert task.fill_cache(CPU) == 6
    folder = task.cache.folder
    assert folder.parent == tmp_path / "run" / "cache"
    assert json.loads((folder / "settings.json").read_text()) == vt.cache_settings(cfg)
    enc = FrozenEncoders(cfg, CPU)
    for s in task.samples[:2]:
        cached = task.cache.get(s.key)
        assert cached["latents"].shape == cached["condition"].shape == (16, 3, 4, 4)  # 9 frames of 32x32
        assert cached["latents"].dtype == torch.float32 and not torch.equal(cached["latents"], cached["condition"])
        # the prompt is kept for its tokens only; padded back it is the 512-token embedding the transformer reads
        full = encode_prompts(enc.tokenizer, enc.text_encoder, [s.caption], 512)[0]
        n = cached["prompt"].shape[0]
        assert 0 < n < 512 and torch.equal(cached["prompt"], full[:n]) and not full[n:].any()
        assert torch.equal(task.batch([task.samples.index(s)], [0], 0, CPU)["prompt"][0], full)

    # a second fill encodes nothing, and does not even load the encoders
    def no_encoders(*args, **kwargs):
        raise AssertionError("the encoders were loaded for a full cache")

    with monkeypatch.context() as m:
        m.setattr(vt, "FrozenEncoders", no_encoders)
        assert task.fill_cache(CPU) == 0
    # a fill killed part-way: the files written stay, a temporary is cleared, only the lacking ones are encoded
    files = sorted(folder.glob("*.safetensors"))
    gone, kept = files[:2], files[2:]
    times = {f: f.stat().st_mtime_ns for f in kept}
    for f in gone:
        f.unlink()
    (folder / f".{gone[0].name}.tmp-killed").write_bytes(b"half a file")
    assert task.fill_cache(CPU) == 2
    assert all(f.is_file() for f in gone) and {f: f.stat().st_mtime_ns for f in kept} == times
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    assert [len(e) for e in _encoded(tmp_path / "run")] == [6, 0, 2]
    # other frames, size or dtype: another folder, never a stale latent
    changes = ("train.frames=5", "wan.height=16", "precision=bf16", f"train.cache_dir={tmp_path}")
    others = {_task(_cfg(tiny_cookgen_clips, tmp_path / "run", c)).cache.folder for c in changes}
    assert len(others) == 4 and folder not in others


def test_each_samples_draws_follow_its_place_in_the_batch_not_the_process(tiny_cookgen_clips, tmp_path):
    task = _task(_cfg(tiny_cookgen_clips, tmp_path / "run"))
    task.fill_cache(CPU)
    task.global_batch(3, 0, 2, 0)  # fit asks for the micro-batch first
    whole = task.batch([4, 1], [0, 1], 3, CPU)  # one process: both positions
    halves = [task.batch([4], [0], 3, CPU), task.batch([1], [1], 3, CPU)]  # two processes: one each
    assert set(whole) == {"latents", "condition", "noise", "sigma", "prompt", "embedding"}
    for k, v in whole.items():
        assert torch.equal(v, torch.cat([h[k] for h in halves])), k
    assert whole["noise"].shape == (2, 16, 3, 4, 4) and whole["prompt"].shape == (2, 512, 32)
    raw = torch.from_numpy(task.samples[4].embedding)
    assert not torch.equal(whole["embedding"][0], raw)  # regularised: z' = S(M(z + eps))
    # another position, micro-batch or step draws anew; the sample itself is read back the same
    task.global_batch(3, 1, 2, 0)
    draws = [halves[0], task.batch([4], [1], 3, CPU), task.batch([4], [0], 3, CPU), task.batch([4], [0], 4, CPU)]
    for k in ("noise", "sigma", "embedding"):
        assert all(not torch.equal(a[k], b[k]) for i, a in enumerate(draws) for b in draws[i + 1 :]), k
    assert all(torch.equal(d["latents"], halves[0]["latents"]) for d in draws)


def test_a_few_steps_lower_the_flow_matching_loss(tiny_cookgen_clips, tmp_path):
    task = _task(_cfg(tiny_cookgen_clips, tmp_path / "run"))
    task.fill_cache(CPU)
    model = build_model(task.cfg, task.space)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("projector.") for n in trainable)
    assert all("lora" in n for n in trainable if n.startswith("transformer."))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    fixed = task.batch([0, 1], [0, 1], 100, CPU)

    def fixed_loss():
        with torch.no_grad():
            return float(model(**fixed)["loss"])

    before = fixed_loss()
    for step in range(8):
        model(**task.batch([0, 1], [0, 1], step, CPU))["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert fixed_loss() < before * 0.95


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_cookgen_clips, tmp_path):
    task = _task(_cfg(tiny_cookgen_clips, tmp_path / "run", "lora.dropout=0.1"))
    task.fill_cache(CPU)
    batch = task.batch([0, 1], [0, 1], 0, CPU)
    grads = []
    for gc in (False, True):
        task.cfg.train.gradient_checkpointing = gc
        model = build_model(task.cfg, task.space)
        assert model.transformer.gradient_checkpointing is gc
        torch.manual_seed(5)  # the same dropout draws (the recomputation replays them)
        loss = model(**batch)["loss"]
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (la, ga), (lb, gb) = grads
    assert torch.equal(la, lb) and ga.keys() == gb.keys()
    assert all(torch.allclose(ga[n], gb[n], atol=1e-7) for n in ga) and any(g.abs().sum() > 0 for g in ga.values())


def test_train_resumes_to_the_same_weights_and_generate_uses_the_checkpoint(tiny_cookgen_clips, tmp_path, capsys):
    # LoRA dropout > 0 draws from the global RNG every step: a resume must restore the RNG states too
    over = ["lora.dropout=0.1", "train.trace_samples=true"]
    full = train(_cfg(tiny_cookgen_clips, tmp_path / "full", *over), progress=False)
    with pytest.raises(SimulatedKill):
        train(_cfg(tiny_cookgen_clips, tmp_path / "cut", *over), stop_after=3, progress=False)
    ckpt = tmp_path / "cut" / "checkpoints" / "step-000002"
    assert {f.name for f in ckpt.iterdir()} == {"lora.safetensors", "projector.safetensors", "videogen.json",
                                                "optimizer.pt", "rng", "state.json"}  # fmt: skip
    assert json.loads((ckpt / "videogen.json").read_text())["step"] == 2
    torch.manual_seed(123)  # a resumed process starts from another RNG state: resume must restore its own
    resumed = train(_cfg(tiny_cookgen_clips, tmp_path / "cut", *over), progress=False)
    for f in ("lora.safetensors", "projector.safetensors"):
        a, b = load_file(str(full / f)), load_file(str(resumed / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [len(e) for e in _encoded(tmp_path / "cut")] == [6, 0]  # the resumed run encoded nothing
    # the trained LoRA moved away from its zero init
    assert any(v.abs().sum() > 0 for k, v in load_file(str(full / "lora.safetensors")).items() if "lora_B" in k)
    meta = json.loads((full / "videogen.json").read_text())
    assert meta["trained_on"]["clips"] == 6 and meta["step"] == 6

    plan = plan_for_checkpoint(tmp_path / "plan", full, n=3)
    assert main(["generate", str(plan), "--preset", "tiny", "--checkpoint", str(full), "--no-progress"]) == 0
    assert load_plan(plan).provenance["videogen"]["trained"] is True
    # generation runs the LoRA in eval mode: its dropout does not act, whatever the global RNG holds
    space = meta["space"]
    cfg = load_config(VideogenConfig, "tiny", [f"checkpoint={full}"], preset_dir=PRESETS)
    gen = WanGenerator(cfg, load_plan(plan).space)
    clips = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        clips.append(gen.clip(Image.new("RGB", (32, 32), (200, 30, 30)), "a cook", torch.ones(space["dim"]), 9, 0))
    assert np.array_equal(*clips)
    # LoRA keys that do not fit (another prefix) would load nothing: an error, not a silent untrained model
    bad = tmp_path / "bad"
    shutil.copytree(full, bad)
    lora = load_file(str(bad / "lora.safetensors"))
    save_file({f"transformer.{k}": v for k, v in lora.items()}, str(bad / "lora.safetensors"))
    capsys.readouterr()
    assert main(["generate", str(plan), "--preset", "tiny", "--checkpoint", str(bad), "--no-progress"]) == 2
    assert "LoRA keys do not fit the model" in capsys.readouterr().err
    # resuming with another LoRA shape is one line, not a size mismatch deep in peft
    argv = ["train", "--preset", "tiny", f"data={tiny_cookgen_clips}", f"out={tmp_path / 'cut'}", "lora.r=8",
            "train.max_steps=8", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "was trained with lora.r=4, this run has 8" in capsys.readouterr().err


def test_bf16_trains_fp32_adapters_on_bf16_weights_and_its_checkpoint_generates(tiny_cookgen_clips, tmp_path):
    cfg = _cfg(tiny_cookgen_clips, tmp_path / "run", "precision=bf16", "train.max_steps=2", "lora.dropout=0.1")
    enc = FrozenEncoders(cfg, CPU)
    assert {p.dtype for p in enc.text_encoder.parameters()} == {torch.bfloat16}  # UMT5-XXL: ~22 GB in fp32
    assert {p.dtype for p in enc.vae.parameters()} == {torch.float32}
    _, space = load_samples(cfg)
    model = build_model(cfg, space)
    keep = set(model.transformer._keep_in_fp32_modules)
    for n, p in model.named_parameters():
        if p.requires_grad:  # LoRA and projector
            assert p.dtype == torch.float32, n
        else:  # the frozen transformer as from_pretrained(dtype=bf16) loads it (test_paper_loading compares)
            assert p.dtype == (torch.float32 if keep & set(n.split(".")) else torch.bfloat16), n
    assert any(not p.requires_grad and p.dtype == torch.bfloat16 for p in model.parameters())
    final = train(cfg, progress=False)
    cached = [load_file(str(f)) for f in (tmp_path / "run" / "cache").glob("*/*.safetensors")]
    assert len(cached) == 6 and {t.dtype for c in cached for t in c.values()} == {torch.bfloat16}
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(np.isfinite(float(r.split(",")[2])) for r in rows)
    for f in ("lora.safetensors", "projector.safetensors"):
        assert {v.dtype for v in load_file(str(final / f)).values()} == {torch.float32}
    assert any(v.abs().sum() > 0 for k, v in load_file(str(final / "lora.safetensors")).items() if "lora_B" in k)
    assert json.loads((final / "videogen.json").read_text())["precision"] == "bf16"
    plan = plan_for_checkpoint(tmp_path / "plan", final)
    argv = ["generate", str(plan), "--preset", "tiny", "--checkpoint", str(final), "precision=bf16", "--no-progress"]
    assert main(argv) == 0 and load_plan(plan).provenance["videogen"]["trained"] is True


def test_train_bad_inputs(tmp_path, capsys):
    assert main(["train", "--config", "tiny", f"data={tmp_path / 'none'}", f"out={tmp_path / 'r'}"]) == 2
    assert "training data folder not found" in capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "train.frames=8", f"data={tmp_path}", f"out={tmp_path / 'r'}"]) == 2
    assert "divisible by 4" in capsys.readouterr().err
    assert main(["train", "wan.max_sequence_length=256", f"data={tmp_path}", f"out={tmp_path / 'r'}"]) == 2
    assert "Wan I2V needs 512 text tokens" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_train_bad_data_or_model_leaves_no_run_folder(tiny_cookgen_no_clips, tiny_cookgen_clips, tmp_path, capsys):
    # a CookGen build without clips: found when the samples load, before the run folder is made
    out = tmp_path / "runs" / "r"
    assert main(["train", "--preset", "tiny", f"data={tiny_cookgen_no_clips}", f"out={out}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no steps with a clip, keyframe and embedding" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()
    # weights that are not there: found when the encoders load, before the cache or anything else is written;
    # the run folders made for it are removed again
    argv = ["train", "--preset", "tiny", f"data={tiny_cookgen_clips}", f"out={out}", "wan.source=pretrained",
            f"wan.model_id={tmp_path / 'no-wan'}", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "cannot load Wan from" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs").mkdir()  # a folder that was there before is kept
    assert main(argv) == 2 and sorted(tmp_path.iterdir()) == [tmp_path / "runs"]
    assert not any((tmp_path / "runs").iterdir())


def test_a_clip_gone_from_its_build_is_one_line(tiny_cookgen_clips, tmp_path, capsys):
    build = tmp_path / "build"
    shutil.copytree(tiny_cookgen_clips, build)
    clip = sorted((build / "clips").rglob("*.mp4"))[0]
    os.unlink(clip)
    assert main(["train", "--preset", "tiny", f"data={build}", f"out={tmp_path / 'r'}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: clip {clip.resolve()} is listed in its CookGen build but missing\n"
    assert not (tmp_path / "r").exists()


def test_every_preset_loads_and_ablations_switch_only_the_regularisers():
    from auteur.config import list_presets

    names = list_presets(PRESETS)
    assert {"tiny", "default", "paper"} <= set(names)
    cfgs = {n: load_config(VideogenConfig, n, preset_dir=PRESETS) for n in names}
    assert cfgs["default"].backend == "animatic" and cfgs["tiny"].backend == "wan"
    rows = {
        n: (c.regularize.noise, c.regularize.mask, c.regularize.shuffle) for n, c in cfgs.items() if "ablation" in n
    }
    assert rows == {
        "ablation-none": (False, False, False),
        "ablation-noise": (True, False, False),
        "ablation-noise-mask": (True, True, False),
        "ablation-noise-mask-shuffle": (True, True, True),
    }
    for n in rows:
        assert cfgs[n].wan == cfgs["paper"].wan and cfgs[n].lora == cfgs["paper"].lora
    paper = cfgs["paper"].train  # 8 GPUs share each global batch of 8 clips; 81 frames need recomputation
    assert paper.batch_size % 8 == 0 and paper.gradient_checkpointing and paper.frames == 81
