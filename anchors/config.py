"""The anchors config (one dataclass tree; presets in ``anchors/presets/*.yaml``).

There is no ``default`` preset: no video diffusion weights ship offline (on PyPI or with this project), so
``anchors`` runs either the ``tiny`` random-initialised model (tests, smoke runs) or a real Wan checkpoint
from a local path (``paper`` and the three training stages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from auteur.errors import AuteurError
from auteur.training import TrainLoop
from auteur.vision import VisionConfig

PRESETS = Path(__file__).parent / "presets"


class AnchorsError(AuteurError):
    """A user-fixable problem in ``anchors`` (bad story, bad condition frames, missing checkpoint)."""


@dataclass
class TransformerConfig:
    """A ``WanTransformer3DModel`` built from config (tiny preset); ignored when ``ModelConfig.pretrained``."""

    num_attention_heads: int = 2
    attention_head_dim: int = 12  # Wan's 3-axis RoPE splits the head dim in (t, h, w) parts
    ffn_dim: int = 32
    num_layers: int = 2
    freq_dim: int = 256
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    rope_max_seq_len: int = 32


@dataclass
class VAEConfig:
    """An ``AutoencoderKLWan`` built from config (tiny preset): 8x spatial compression with 4 levels."""

    base_dim: int = 3
    z_dim: int = 4
    dim_mult: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    num_res_blocks: int = 1


@dataclass
class TextConfig:
    """A ``T5EncoderModel`` built from config with a locally built byte-level tokenizer (tiny preset)."""

    d_model: int = 32
    num_layers: int = 1
    num_heads: int = 2
    d_kv: int = 16
    d_ff: int = 64
    max_tokens: int = 96  # prompts are padded/truncated to this many tokens (Wan: 512)


@dataclass
class ModelConfig:
    """What the anchors model is: a widened Wan transformer + condition embeddings, a VAE, a text encoder.

    ``kind``: ``wan`` loads a local diffusers Wan folder ``pretrained`` (``transformer/``, ``vae/``,
    ``text_encoder/``, ``tokenizer/``, e.g. Wan2.1-T2V-1.3B-Diffusers); ``tiny`` builds the tiny components
    from config under ``torch.manual_seed(seed)`` (random weights: a code-path check, not a generator).
    """

    kind: Literal["tiny", "wan"] = "tiny"
    pretrained: str = ""  # with kind=wan: the local diffusers Wan folder
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    cond_freq_dim: int = 64  # sinusoidal features per condition scalar
    cond_hidden: int = 64  # hidden width of each condition MLP
    height: int = 32  # story-frame size in pixels (a multiple of VAE compression x patch size)
    width: int = 32
    max_frames: int = 8  # most story frames the model is trained/asked to generate jointly
    seed: int = 0


@dataclass
class DataConfig:
    """CookGen builds -> story-frame sequences (see :mod:`anchors.data`)."""

    train_split: str = "train"
    interval_seconds: float = 0.5  # time between story frames sampled within a step's clip
    max_frames_per_step: int = 2  # at most this many story frames from one step
    num_frames: int = 4  # story frames per training sample
    stride: int = 2  # windows of num_frames story frames start every `stride` frames
    default_fps: float = 30.0  # source fps when no clip can be probed (keyframe-only builds)
    style: str = "a real-world cooking video, filmed close up"  # CookGen has no style field
    # the latent cache: every sample's story-frame latents and prompt embeddings, encoded once (by all processes
    # together) and read back per batch; "" = RUN/latents. One folder shared by several runs (the stages, reruns)
    # encodes each sample once for all of them: a subfolder per encoder and settings keeps them apart
    cache_dir: str = ""


@dataclass
class TrainConfig(TrainLoop):
    """The shared loop settings (:class:`auteur.training.TrainLoop`: learning rate, warm-up, steps, global
    ``batch_size`` over all processes, checkpoints, ``strategy`` ddp|fsdp) with anchors' defaults (warm-up then
    constant), and the StoryAnchors progressive stage, which picks the caption format and the condition frames:

    - ``global``: one global caption per sequence, no condition frames;
    - ``multievent``: multi-event captions, a random subset of frames given with probability ``p_condition``;
    - ``continuation``: multi-event captions, the first k frames given (k random in 1..F-1) with
      probability ``p_condition``.
    """

    stage: Literal["global", "multievent", "continuation"] = "multievent"
    init_from: str = ""  # a checkpoint folder of the previous stage (RUN/final)
    p_condition: float = 0.5
    caption_dropout: float = 0.1  # empty prompt for classifier-free guidance
    lr: float = 1e-3
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    max_steps: int = 20
    batch_size: int = 2
    save_every: int = 10
    log_every: int = 5


@dataclass
class GenerateConfig:
    """Sampling: flow-matching Euler over the story-frame latents, and the condition values asked for.

    A story longer than ``window`` frames is extended by continuation (StoryAnchors §4.3): the first window
    is generated jointly, each next one conditioned on the last ``overlap`` frames of the one before."""

    num_frames: int = 4
    window: int = 0  # story frames generated jointly (0: model.max_frames); longer stories go in windows
    overlap: int = 2  # each later window is conditioned on this many last frames of the one before (< window)
    steps: int = 8
    shift: float = 3.0  # flow-matching timestep shift (Wan uses 3-5 at 480p)
    guidance_scale: float = 1.0  # classifier-free guidance (1: off, one forward per step)
    fps: float = 30.0
    frame_interval: float = 15.0  # source-video frames between story frames
    motion: float = 20.0  # motion degree: mean |pixel difference| (0..255) between consecutive story frames
    embed: bool = True  # embed the keyframes with `vision` into the plan (a known visual space)


@dataclass
class AnchorsConfig:
    """Everything that makes an anchors run (saved as config.yaml in every output folder)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    checkpoint: str | None = None  # a trained anchors model (folder with anchors.json)
    data: list[str] = field(default_factory=list)  # CookGen build folders to train on
    out: str = ""  # run folder for `anchors train`
    resume: Literal["auto", "never"] = "auto"
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
