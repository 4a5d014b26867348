"""`renderer train` in one process: the flow-matching loss falls on a fixed batch; a killed run resumes to the same
weights (fp32, and a bf16 FLUX with fp32 LoRA and adapter); gradient checkpointing changes nothing but memory.
Several processes: ``test_distributed.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from auteur.config import load_config
from renderer.cli import main
from renderer.config import PRESETS, RenderConfig
from renderer.train import (
    RendererTask,
    SimulatedKill,
    build_for_training,
    flow_matching_loss,
    load_episodes,
    make_sample,
    sample_plan,
    train,
    trainable_parameters,
)


def test_loss_falls_on_a_fixed_batch(tiny_cookgen: Path):
    cfg = load_config(RenderConfig, "tiny", preset_dir=PRESETS)
    episodes, space = load_episodes([str(tiny_cookgen)])
    assert len(episodes) == 2 and all(len(e.keyframes) == 3 for e in episodes)
    renderer = build_for_training(cfg, space)
    params = trainable_parameters(renderer)
    n_lora = sum(p.numel() for n, p in renderer.pipe.transformer.named_parameters() if p.requires_grad)
    assert n_lora > 0 and all("lora" in n for n, p in renderer.pipe.transformer.named_parameters() if p.requires_grad)
    samples = [make_sample(episodes[0], 2, 2, 32, 32), make_sample(episodes[1], 1, 1, 32, 32)]
    assert samples[0]["image"].size == (96, 32) and samples[1]["image"].size == (64, 32)
    assert samples[0]["prompt"].startswith("[SCENE-1]") and "[SCENE-3]" in samples[0]["prompt"]

    def batch_loss():  # one fixed sample: fixed noise and sigma (seeded generator)
        return flow_matching_loss(renderer, samples[1], torch.Generator().manual_seed(0), "none")

    opt = torch.optim.Adam(params, lr=2e-2)
    with torch.no_grad():
        first = float(batch_loss())
    for _ in range(6):
        opt.zero_grad()
        loss = batch_loss()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(batch_loss())
    assert last < 0.95 * first, (first, last)  # measured: 1.450 -> 1.296


def test_context_length_drawn_per_sample(tiny_cookgen: Path):
    cfg = load_config(RenderConfig, "tiny", ["train.batch_size=4"], preset_dir=PRESETS)
    episodes, _ = load_episodes([str(tiny_cookgen)])
    ks = [(t, k) for step in range(20) for _, t, k, _ in sample_plan(episodes, cfg, step)]
    assert all(1 <= k <= min(3, t) for t, k in ks) and {k for _, k in ks} == {1, 2}
    assert sample_plan(episodes, cfg, 7) == sample_plan(episodes, cfg, 7)
    # with gradient accumulation each micro-batch is the next batch of the same stream (its own samples, context
    # lengths and noise seeds), not a repeat of the step's first
    accum = load_config(RenderConfig, "tiny", ["train.batch_size=4", "train.grad_accum=2"], preset_dir=PRESETS)
    assert [sample_plan(episodes, accum, 3, m) for m in (0, 1)] == [sample_plan(episodes, cfg, s) for s in (6, 7)]
    seeds = [seed for s in range(5) for m in (0, 1) for *_, seed in sample_plan(episodes, accum, s, m)]
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_train_resume_matches_uninterrupted(tiny_cookgen: Path, tmp_path: Path, dtype: str):
    # LoRA dropout > 0: the global RNG is drawn every step, so the RNG states must be saved and restored too.
    # bf16 (a bf16 FLUX, LoRA and adapter in fp32 under bf16 autocast): the resumed run loads the fp32 checkpoint
    # into fp32 parameters, not into bf16 ones widened afterwards
    base = [
        "train.max_steps=3",
        "train.save_every=1",
        "train.batch_size=1",
        "lora.dropout=0.1",
        f"flux.dtype={dtype}",
        f"data={tiny_cookgen}",
    ]
    full = train(
        load_config(RenderConfig, "tiny", base + [f"out={tmp_path / 'a'}"], preset_dir=PRESETS), progress=False
    )
    cfg_b = load_config(RenderConfig, "tiny", base + [f"out={tmp_path / 'b'}"], preset_dir=PRESETS)
    with pytest.raises(SimulatedKill):
        train(cfg_b, stop_after=2, progress=False)
    ckpt = tmp_path / "b" / "checkpoints" / "step-000002"
    # the shared checkpoint layout: the renderer's files, the optimizer by parameter name, the RNG states as
    # safetensors + JSON (nothing unpickled), the step
    assert {f.name for f in ckpt.iterdir()} == {
        "lora.safetensors", "adapter.safetensors", "renderer.json", "optimizer.pt", "rng", "state.json"}  # fmt: skip
    assert sorted(f.name for f in (ckpt / "rng").iterdir()) == ["rank-0.json", "rank-0.safetensors"]
    torch.manual_seed(123)  # a resumed process starts from another RNG state: resume must restore its own
    resumed = train(cfg_b, progress=False)
    for name in ("lora.safetensors", "adapter.safetensors"):
        a, b, mid = (load_file(str(f / name)) for f in (full, resumed, ckpt))
        assert a.keys() == b.keys() and len(a) > 0
        assert all(torch.equal(a[k], b[k]) for k in a), name  # bit-identical on CPU
        assert any(not torch.equal(a[k], mid[k]) for k in a), name  # and step 3 did change them
        assert all(v.dtype == torch.float32 for v in a.values())


def test_lora_keys_that_do_not_fit_are_an_error(tiny_cookgen: Path):
    from auteur.training import load_lora_state
    from renderer.errors import RendererError

    cfg = load_config(RenderConfig, "tiny", preset_dir=PRESETS)
    _, space = load_episodes([str(tiny_cookgen)])
    src, dst = build_for_training(cfg, space), build_for_training(cfg, space)
    from peft.utils import get_peft_model_state_dict

    state = {k: v + 1.0 for k, v in get_peft_model_state_dict(src.pipe.transformer).items()}
    assert (
        load_lora_state(dst.pipe.transformer, state, "ok", RendererError) == len(state) == 14
    )  # q, k, v (+ out in the double block), A and B
    loaded = get_peft_model_state_dict(dst.pipe.transformer)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(RendererError, match="LoRA keys do not fit"):  # another prefix: nothing would load
        load_lora_state(dst.pipe.transformer, {f"transformer.{k}": v for k, v in state.items()}, "bad", RendererError)
    with pytest.raises(RendererError, match="1 missing"):
        load_lora_state(dst.pipe.transformer, dict(list(state.items())[1:]), "bad", RendererError)


def test_train_cli_then_render_with_checkpoint(tiny_cookgen: Path, tiny_plan: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--config", "tiny", f"data={tiny_cookgen}", f"out={run}", "train.max_steps=2", "lora.dropout=0.5"]
    argv.append("--no-progress")
    assert main(argv) == 0
    assert (run / "final" / "lora.safetensors").is_file() and (run / "checkpoints" / "step-000002").is_dir()
    assert len((run / "log.csv").read_text().splitlines()) == 3
    # resume=auto: a rerun finds step 2 done and only rewrites final
    assert main(argv) == 0
    render = ["render", str(tiny_plan), "--preset", "tiny", "--no-progress"]
    assert main(render) == 0  # untrained first
    capsys.readouterr()
    assert main([*render, "--checkpoint", str(run / "final")]) == 0
    from auteur.plan import load_plan

    prov = load_plan(tiny_plan).provenance["renderer"]
    assert prov["trained"] is True and "label" not in prov
    # the untrained keyframes were not kept: another checkpoint is another renderer
    out = capsys.readouterr().out
    assert "3 keyframes rendered, 0 already there; 3 made by another renderer (preset tiny)" in out, out
    ckpt = str((run / "final").resolve())
    assert all(s.meta["render"]["renderer"]["checkpoint"] == ckpt for s in load_plan(tiny_plan).steps)
    # rendering runs the LoRA in eval mode: its dropout (0.5 here) does not act, whatever the global RNG holds
    first = [(tiny_plan / f"keyframes/step-00{i}.png").read_bytes() for i in (1, 2, 3)]
    torch.manual_seed(1)
    assert main([*render, "--checkpoint", str(run / "final"), "--force"]) == 0
    assert [(tiny_plan / f"keyframes/step-00{i}.png").read_bytes() for i in (1, 2, 3)] == first


def test_train_bad_size_or_model_leaves_no_run_folder(tiny_cookgen: Path, tmp_path: Path, capsys):
    out = tmp_path / "runs" / "r"
    base = ["train", "--config", "tiny", f"data={tiny_cookgen}", f"out={out}", "--no-progress"]
    # a size the model cannot take: found from the config, before the run folder is made
    assert main([*base, "width=30", "height=30"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: size 30x30 is not divisible by the model's patch size 4") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
    # FLUX weights that are not there: found when the model loads; the run folders made for it are removed again
    missing = ["flux.kind=pretrained", f"flux.model={tmp_path / 'no-flux'}"]
    assert main([*base, *missing]) == 2
    assert "cannot load FLUX.1 Fill from" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    out.mkdir(parents=True)  # a run folder that was there before is kept
    assert main([*base, *missing]) == 2 and out.is_dir() and not any(out.iterdir())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_cookgen: Path):
    """``train.gradient_checkpointing`` (on in the paper preset) recomputes FLUX's block activations in the backward
    pass instead of storing them: the same loss and gradients, through the task's own batch and forward."""
    episodes, space = load_episodes([str(tiny_cookgen)])
    cpu = torch.device("cpu")
    out = {}
    for on in (False, True):
        over = ["train.batch_size=2", f"train.gradient_checkpointing={str(on).lower()}"]
        task = RendererTask(load_config(RenderConfig, "tiny", over, preset_dir=PRESETS), episodes, space)
        model = task.build(cpu)
        assert model.transformer.is_gradient_checkpointing is on
        batch = task.batch(task.global_batch(0, 0, 2, 0), [0, 1], 0, cpu)
        loss = task.forward(model, batch)["loss"]
        loss.backward()
        out[on] = loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    (loss_off, grads_off), (loss_on, grads_on) = out[False], out[True]
    assert torch.equal(loss_off, loss_on) and grads_off.keys() == grads_on.keys() and len(grads_on) == 14 + 6
    assert all(torch.equal(grads_off[n], grads_on[n]) for n in grads_on)
    assert all(g.abs().sum() > 0 for n, g in grads_on.items() if "lora_A" not in n)  # LoRA A: B is zero at first
