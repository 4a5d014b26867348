"""The director and the planner put every tensor they build on the LM's device (``backbone.device``).

This machine has no GPU, so the CPU tests can only check that what is created lands on ``director.device``
(the CPU here) and, on PyTorch's ``meta`` device (shapes, no data), that the director's own parts and the
planner's index tensors follow an LM that is not on the CPU. The CUDA test runs only where CUDA is available.
"""

from __future__ import annotations

import pytest
import torch

from director.backbone import BackboneConfig, load_backbone
from director.model import Director
from director.plan import OutputHead, Planner, _Feeder
from tests.director.test_director import TINY_SPACE, tiny_director


def test_director_parts_and_planner_indices_follow_a_non_cpu_lm() -> None:
    backbone = load_backbone(BackboneConfig(kind="tiny"))
    _, _, cfg = tiny_director()
    director = Director(backbone.model.to("meta"), backbone.tokenizer, cfg.model, TINY_SPACE.dim)
    assert director.device == torch.device("meta")
    assert {p.device.type for p in director.parameters()} == {"meta"}  # LoRA, image_embeds, head, projector
    assert {b.device.type for b in director.buffers()} == {"meta"}
    assert Planner(director, cfg.plan).banned.device.type == "meta"
    head = OutputHead(director.base_lm().get_output_embeddings().weight, [3, 5, 8])
    assert head.index.device.type == "meta"
    assert head(torch.zeros(2, director.hidden, device="meta")).device.type == "meta"


def test_the_feeder_sends_ids_and_visual_states_to_a_non_cpu_lm(monkeypatch) -> None:
    """A forward on ``meta`` stops at the first data-dependent branch, after the director saw its inputs."""
    backbone = load_backbone(BackboneConfig(kind="tiny"))
    _, _, cfg = tiny_director()
    director = Director(backbone.model.to("meta"), backbone.tokenizer, cfg.model, TINY_SPACE.dim)
    seen = _record_devices(director, monkeypatch)
    z = torch.randn(1, TINY_SPACE.dim)  # a kept step's embedding, read from a plan file: on the CPU
    with pytest.raises(RuntimeError, match="meta"):
        _Feeder(director, use_cache=True).feed([director.vis_id], vis=z)
    assert seen == [torch.device("meta")] * 2  # the ids and the visual state


def _record_devices(director: Director, monkeypatch) -> list[torch.device]:
    """Record the device of every tensor the planner passes into the director and its LM."""
    seen: list[torch.device] = []

    def note(*values) -> None:
        seen.extend(v.device for v in values if isinstance(v, torch.Tensor))

    embed = director.embed

    def recording_embed(ids, vis=None):
        note(ids, vis)
        return embed(ids, vis)

    monkeypatch.setattr(director, "embed", recording_embed)
    for module in (director.base_lm(), director.base_lm().get_decoder()):
        module.register_forward_pre_hook(lambda m, args, kwargs: note(*args, *kwargs.values()), with_kwargs=True)
    return seen


def test_plan_tensors_are_created_on_the_model_device(monkeypatch) -> None:
    """CPU only here: every input tensor is on ``director.device`` (the CPU), the plan's embeddings on the CPU."""
    director, _, cfg = tiny_director()
    seen = _record_devices(director, monkeypatch)
    planner = Planner(director, cfg.plan)
    result = planner.plan("how to make pancakes", steps=2, seed=0)
    planner.plan("how to make pancakes", steps=1, seed=0, use_cache=False)
    keep = [(s.action, s.caption, s.embedding) for s in result.steps[:1]]
    cfg.plan.output_vocab = "trained"  # the restricted output projection (run_decoder, OutputHead)
    director.output_vocab = list(range(10, 300))
    cfg.plan.temperature = 0.8  # sampling: the generator and the penalty's ids on the logits' device
    cfg.plan.repetition_penalty = 1.3
    Planner(director, cfg.plan).plan("how to make pancakes", steps=2, seed=0, keep=keep)
    assert len(seen) > 20 and set(seen) == {director.device}
    assert all(s.embedding.device == torch.device("cpu") for s in result.steps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_plan_on_cuda_equals_the_cpu_plan() -> None:  # pragma: no cover - GPU machines only
    from director.checkpoint import build_director

    plans = {}
    for device in ("cpu", "cuda"):
        _, _, cfg = tiny_director()
        cfg.backbone.device = device
        director, _, _ = build_director(cfg.backbone, cfg.model, TINY_SPACE, seed=0)
        assert director.device.type == device
        assert {p.device.type for p in director.parameters()} == {device}
        plans[device] = Planner(director, cfg.plan).plan("how to make pancakes", steps=2, seed=0)
    cpu, cuda = plans["cpu"], plans["cuda"]
    assert [(s.action, s.caption) for s in cuda.steps] == [(s.action, s.caption) for s in cpu.steps]
    assert cuda.embeddings.device.type == "cpu"
    torch.testing.assert_close(cuda.embeddings, cpu.embeddings, rtol=1e-3, atol=1e-4)
