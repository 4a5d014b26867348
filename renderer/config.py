"""The renderer's config (one dataclass tree; presets in ``renderer/presets/*.yaml``).

``backend`` picks the code path: ``flux`` (FluxFillPipeline: the ``tiny`` and ``paper`` presets) or
``retrieval`` (the offline ``default``: nearest frames of a frame bank, labelled as retrieval).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from auteur.training import TrainLoop
from auteur.vision import VisionConfig

PRESETS = Path(__file__).parent / "presets"


@dataclass
class FluxConfig:
    """The FLUX.1 Fill model. ``kind: tiny`` builds every component at toy sizes from these numbers (random
    weights, seeded by ``init_seed``); ``kind: pretrained`` loads ``model`` (a local folder or hub id of
    FLUX.1-Fill-dev) with ``FluxFillPipeline.from_pretrained``."""

    kind: Literal["tiny", "pretrained"] = "tiny"
    model: str = ""
    # the weights' dtype, and the renderer's precision: `renderer train` with bf16 keeps LoRA and adapter in fp32
    # and runs the forward under bf16 autocast
    dtype: Literal["fp32", "bf16"] = "fp32"
    # enable_model_cpu_offload while rendering (FLUX.1 Fill dev in bf16 on one 80 GB GPU); `renderer train` keeps
    # every component on its process's device whatever this says
    cpu_offload: bool = False
    init_seed: int = 0
    # tiny sizes (as diffusers' tests/pipelines/flux/test_pipeline_flux_fill.py get_dummy_components)
    num_layers: int = 1
    num_single_layers: int = 1
    attention_head_dim: int = 16
    num_attention_heads: int = 2
    joint_attention_dim: int = 32  # = the T5 hidden size (d_model)
    pooled_projection_dim: int = 32  # = the CLIP text hidden size
    axes_dims_rope: list[int] = field(default_factory=lambda: [4, 4, 8])
    guidance_embeds: bool = False
    vae_block_out_channels: list[int] = field(default_factory=lambda: [4, 4])
    latent_channels: int = 2
    text_layers: int = 2
    clip_max_length: int = 77
    # sampling
    max_sequence_length: int = 512
    num_inference_steps: int = 28
    guidance_scale: float = 30.0


@dataclass
class AdapterConfig:
    """The embedding adapter: one visual embedding -> ``num_tokens`` extra T5-space tokens (FLUX Redux's path)."""

    num_tokens: int = 4
    hidden: int = 256
    zero_init: bool = False  # True: the untrained adapter adds zero tokens (leave a pretrained FLUX unchanged)


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class RetrievalConfig:
    """Retrieval renderer (renderer/retrieval.py): score_j = visual * cos(z_t, b_j) + consistency * mean cos to the
    last k chosen frames + text * cos(step text, frame's source-step text) - diversity * near-duplicate hinge
    (cosine above ``diversity_threshold`` to a frame of an earlier, different step) - clip_reuse * [its clip is
    already used]. These defaults are the plain visual + consistency score; the ``default`` preset sets the rest."""

    bank: str = ""  # a frame bank folder (`cookgen bank CLIPS_DIR --out BANK`; format: auteur.bank)
    consistency: float = 0.5
    allow_repeats: bool = False
    visual: float = 1.0
    text: float = 0.0  # needs a bank with step texts (`cookgen bank` since issue 18); off otherwise, with a note
    diversity: float = 0.0
    diversity_threshold: float = 0.9
    clip_reuse: float = 0.0


@dataclass
class TrainConfig(TrainLoop):
    """The shared loop settings (:class:`auteur.training.TrainLoop`: lr, schedule, ``batch_size`` canvases per
    micro-batch over all processes, grad_accum, checkpoints, ``strategy`` ddp|fsdp) with the renderer's defaults,
    and its own: each canvas draws its context length from 1..``max_context``; ``weighting`` is the timestep
    density; ``gradient_checkpointing`` recomputes each FLUX block's activations in the backward pass (FLUX.1
    Fill at paper size: the activations of a 4-panel canvas would not fit next to the weights otherwise)."""

    lr: float = 1e-4
    max_steps: int = 1000
    batch_size: int = 1
    save_every: int = 100
    log_every: int = 10
    max_context: int = 3  # context length drawn uniformly from 1..max_context (limited by the steps before)
    weighting: Literal["none", "logit_normal"] = "logit_normal"  # timestep density, as diffusers' FLUX examples
    gradient_checkpointing: bool = False


@dataclass
class RenderConfig:
    """Everything that makes a render or a renderer training run (saved as config.yaml in outputs)."""

    backend: Literal["flux", "retrieval"] = "retrieval"
    flux: FluxConfig = field(default_factory=FluxConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)  # the visual space of an untrained flux renderer
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: str | None = None  # a `renderer train` output (RUN/final) with LoRA + adapter
    context: int = 2  # k: reference keyframes on the canvas (1..3)
    width: int = 512  # one panel
    height: int = 512
    seed: int = 0
    data: list[str] = field(default_factory=list)  # CookGen builds for `renderer train`
    out: str = ""  # run folder for `renderer train`
    resume: Literal["auto", "never"] = "auto"
