"""The videogen config (one dataclass tree; presets in ``videogen/presets/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from auteur.training import TrainLoop

PRESETS = Path(__file__).parent / "presets"


@dataclass
class RegularizeConfig:
    """The robustness regularisers of VideoAuteur §4.3 / Table 7: ``z' = S(M(z + eps))``, each switchable."""

    noise: bool = True
    noise_scale: float = 0.5  # sigma = noise_scale x the embedding's std
    mask: bool = True
    mask_ratio: float = 0.25  # fraction of embedding entries set to zero
    shuffle: bool = True
    shuffle_ratio: float = 0.25  # fraction of embedding entries permuted among themselves


@dataclass
class AnimaticConfig:
    """The offline default: each keyframe held for its step with a slow pan/zoom and a crossfade."""

    width: int = 640
    height: int = 640
    step_seconds: float = 4.0  # how long each step is held
    crossfade_seconds: float = 0.5  # the end of each clip blends into the next step's first frame
    zoom: float = 0.08  # the crop shrinks by this fraction over a step (a slow zoom in)
    pan: float = 0.04  # and its centre drifts by this fraction of the frame


@dataclass
class WanConfig:
    """The Wan 2.1 image-to-video model: ``pretrained`` from a local folder (diffusers layout) or ``tiny``."""

    source: Literal["tiny", "pretrained"] = "tiny"
    model_id: str = ""  # local folder or hub id of a diffusers Wan I2V checkpoint (pretrained only)
    height: int = 32
    width: int = 32
    num_inference_steps: int = 2
    guidance_scale: float = 1.0  # > 1 runs classifier-free guidance with an empty negative prompt
    max_sequence_length: int = 512  # Wan's text length (its attention splits image tokens at len - 512)
    flow_shift: float = 3.0
    # tiny sizes (source: tiny), as diffusers' tests/pipelines/wan/test_wan_image_to_video.py builds them
    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 12
    ffn_dim: int = 32
    text_dim: int = 32
    image_dim: int = 4
    vae_base_dim: int = 3
    text_layers: int = 2


@dataclass
class ProjectorConfig:
    """Director embedding [dim] -> ``num_tokens`` image-conditioning tokens of the video model."""

    num_tokens: int = 4
    hidden: int = 64


@dataclass
class LoraConfig:
    r: int = 4
    alpha: int = 8
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]
    )


@dataclass
class TrainConfig(TrainLoop):
    """The shared loop settings (:class:`auteur.training.TrainLoop`: ``batch_size`` clips per micro-batch over all
    processes, a multiple of their count) with videogen's defaults, and videogen's own."""

    lr: float = 1e-4
    max_steps: int = 1000
    batch_size: int = 1
    save_every: int = 100
    log_every: int = 10
    frames: int = 9  # frames sampled from each training clip ((frames - 1) % 4 == 0 for Wan's VAE)
    # the encoded clips, first-frame conditions and prompts (encoded once, read back per batch); none: RUN/cache.
    # Runs on the same builds and model (ablations) can share one folder; its subfolder names the settings
    cache_dir: str | None = None
    # recompute each transformer block's activations in the backward pass instead of keeping them: Wan 14B at
    # 81x480x832 keeps ~1 GB per block and tensor otherwise (diffusers' enable_gradient_checkpointing)
    gradient_checkpointing: bool = False


@dataclass
class VideogenConfig:
    """Everything that makes a videogen run (saved as config.yaml beside what it writes)."""

    backend: Literal["animatic", "wan"] = "animatic"
    fps: float = 24.0
    frames: int = 81  # frames per generated clip (wan)
    crf: int = 20
    encoder_preset: str = "veryfast"  # x264 speed preset
    animatic: AnimaticConfig = field(default_factory=AnimaticConfig)
    wan: WanConfig = field(default_factory=WanConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: str | None = None  # a trained videogen folder (videogen.json); none: untrained projector
    data: list[str] = field(default_factory=list)  # CookGen build folders (train)
    split: str = "train"
    out: str = ""  # run folder (train)
    resume: Literal["auto", "never"] = "auto"
    seed: int = 0
    # bf16: generation loads a pretrained transformer and text encoder in bf16 (the VAE stays fp32); training
    # holds the frozen transformer and text encoder in bf16 (tiny too), keeps the trainable LoRA and projector in
    # fp32 and runs the forward under bf16 autocast
    precision: Literal["fp32", "bf16"] = "fp32"
