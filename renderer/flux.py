"""FLUX.1 Fill with a rolling context: build the pipeline, encode tiled prompts with embedding tokens, render.

VideoAuteur (Xiao et al., 2025, §4.2 and §5.2) renders each keyframe with FLUX.1 Fill conditioned on the
previous keyframes (on one canvas, masked), the tiled captions and the director's visual embedding. This module
holds the model side: :func:`build_pipeline` (``tiny``: every component at toy size from config, as diffusers'
``get_dummy_components``; ``pretrained``: ``FluxFillPipeline.from_pretrained``), :class:`FluxRenderer` (pipeline
+ embedding adapter + optional LoRA checkpoint) and the checkpoint format that ``renderer train`` writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from auteur import training
from auteur.config import to_dict
from auteur.plan import VisualSpace
from auteur.tokenizers import byte_level_tokenizer
from renderer.adapter import EmbeddingAdapter, append_tokens
from renderer.canvas import make_canvas, tiled_caption
from renderer.config import FluxConfig, RenderConfig
from renderer.errors import RendererError

log = logging.getLogger(__name__)

CKPT_META = "renderer.json"
LORA_FILE = "lora.safetensors"
ADAPTER_FILE = "adapter.safetensors"


# --------------------------------------------------------------------------------------------- tiny components


def tiny_model_id(cfg: FluxConfig) -> str:
    """An id naming the tiny architecture and its random init (a checkpoint is only valid on the same one)."""
    keys = {k: v for k, v in to_dict(cfg).items() if k not in ("num_inference_steps", "guidance_scale", "cpu_offload")}
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]
    return f"tiny-random-flux-fill/{digest}/seed{cfg.init_seed}"


def _tiny_components(cfg: FluxConfig) -> dict[str, Any]:
    """Every FluxFillPipeline component at toy size, random weights under ``torch.manual_seed(init_seed)``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if sum(cfg.axes_dims_rope) != cfg.attention_head_dim:
        raise RendererError(
            f"flux.axes_dims_rope {cfg.axes_dims_rope} must sum to flux.attention_head_dim ({cfg.attention_head_dim})"
        )
    vae_scale = 2 ** (len(cfg.vae_block_out_channels) - 1)
    packed = cfg.latent_channels * 4  # 2x2 latent patches packed into channels
    tokenizer = byte_level_tokenizer(cfg.clip_max_length, extra_specials=["<s>"])  # <s> = 3: CLIP's bos id
    tokenizer_2 = byte_level_tokenizer(cfg.max_sequence_length, extra_specials=["<s>"])
    vocab = len(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        # Fill input: noisy latents ‖ masked-image latents ‖ the mask packed (vae_scale^2 * 4 channels)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=2 * packed + vae_scale * vae_scale * 4,
            out_channels=packed,
            num_layers=cfg.num_layers,
            num_single_layers=cfg.num_single_layers,
            attention_head_dim=cfg.attention_head_dim,
            num_attention_heads=cfg.num_attention_heads,
            joint_attention_dim=cfg.joint_attention_dim,
            pooled_projection_dim=cfg.pooled_projection_dim,
            axes_dims_rope=list(cfg.axes_dims_rope),
            guidance_embeds=cfg.guidance_embeds,
        )
        torch.manual_seed(cfg.init_seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab,
                hidden_size=cfg.pooled_projection_dim,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=cfg.text_layers,
                max_position_embeddings=cfg.clip_max_length,
                projection_dim=cfg.pooled_projection_dim,
                hidden_act="gelu",
                layer_norm_eps=1e-5,
                bos_token_id=3,
                eos_token_id=1,
                pad_token_id=0,
            )
        )
        torch.manual_seed(cfg.init_seed)
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=vocab,
                d_model=cfg.joint_attention_dim,
                d_kv=8,
                d_ff=37,
                num_layers=cfg.text_layers,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        torch.manual_seed(cfg.init_seed)
        n = len(cfg.vae_block_out_channels)
        vae = AutoencoderKL(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
            block_out_channels=list(cfg.vae_block_out_channels),
            layers_per_block=1,
            latent_channels=cfg.latent_channels,
            norm_num_groups=1,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": text_encoder.eval(),
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "vae": vae.eval(),
    }


#: what a local FLUX.1 Fill [dev] folder holds (the diffusers layout: ``FluxFillPipeline.save_pretrained``)
FLUX_PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def check_flux_folder(model: str) -> None:
    """RendererError naming what a local FLUX folder lacks (an incomplete download), before diffusers logs its
    own errors about it; a hub id (no such folder) is left to ``from_pretrained``."""
    root = Path(model).expanduser()
    if not root.is_dir():
        return
    lacking = [] if (root / "model_index.json").is_file() else ["model_index.json"]
    weighted = tuple(p for p in FLUX_PARTS if p.startswith(("transformer", "vae", "text_encoder")))
    lacking += training.model_folder_gaps(root, FLUX_PARTS, weighted)
    if lacking:
        raise RendererError(
            f"flux.model={model}: not a complete diffusers FLUX.1 Fill folder (no {', '.join(lacking)})"
        )


def build_pipeline(cfg: FluxConfig, device: torch.device | None = None):
    """A ``FluxFillPipeline``: toy components from config (``tiny``) or FLUX.1 Fill weights (``pretrained``).

    Rendering (``device`` None): on the GPU when there is one, with ``flux.cpu_offload`` one component at a time.
    Training (``device``: the process's device): every component on ``device``, never offloaded (offload moves
    each model to ``cuda:0`` per call: every process of a multi-GPU run would share GPU 0, and the trainable
    transformer would leave its device between forward and backward).
    """
    from diffusers import FluxFillPipeline

    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    if cfg.kind == "tiny":
        pipe = FluxFillPipeline(**_tiny_components(cfg))
        pipe.to(dtype=dtype)  # initialised in fp32, then rounded: flux.dtype=bf16 tests the paper's precision
        model_id = tiny_model_id(cfg)
    else:
        if not cfg.model:
            raise RendererError("flux.kind=pretrained needs flux.model (a local FLUX.1-Fill-dev folder or hub id)")
        check_flux_folder(cfg.model)
        try:
            pipe = FluxFillPipeline.from_pretrained(cfg.model, dtype=dtype)  # torch_dtype: a FutureWarning
        except (OSError, ValueError) as e:
            raise RendererError(f"cannot load FLUX.1 Fill from {cfg.model}: {str(e).splitlines()[0]}") from None
        model_id = cfg.model
    if device is not None:
        pipe.to(device)
    elif cfg.cpu_offload and torch.cuda.is_available():
        pipe.enable_model_cpu_offload()  # keeps one component on the GPU at a time (FLUX dev on one 80 GB GPU)
    elif torch.cuda.is_available():
        pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.model_id = model_id
    return pipe


def size_multiple(pipe) -> int:
    """Panel sides must be multiples of this: the VAE's downscale times FLUX's 2x2 latent packing."""
    return pipe.vae_scale_factor * 2


def config_size_multiple(cfg: FluxConfig) -> int | None:
    """:func:`size_multiple` from the config alone, before any weights load: ``tiny`` from its VAE widths,
    ``pretrained`` from a local folder's ``vae/config.json``; None when that is not at hand (a hub id), so the
    size is checked once the pipeline is loaded."""
    blocks = cfg.vae_block_out_channels
    if cfg.kind == "pretrained":
        path = Path(cfg.model) / "vae" / "config.json"
        try:
            blocks = json.loads(path.read_text()).get("block_out_channels") if cfg.model and path.is_file() else None
        except (OSError, ValueError, AttributeError):
            blocks = None
    if not isinstance(blocks, list) or not blocks:
        return None
    return 2 ** (len(blocks) - 1) * 2  # FluxFillPipeline: vae_scale_factor = 2^(len(block_out_channels) - 1)


def check_size(multiple: int | None, width: int, height: int) -> None:
    """Raise RendererError unless both panel sides are positive multiples of ``multiple`` (None: unknown yet)."""
    m = multiple
    if m is not None and (width < m or height < m or width % m or height % m):
        raise RendererError(
            f"size {width}x{height} is not divisible by the model's patch size {m} (VAE x 2x2 packing)"
        )


# --------------------------------------------------------------------------------------------- the renderer


class FluxRenderer:
    """FluxFillPipeline + embedding adapter (+ a trained LoRA/adapter checkpoint) for a plan's visual space.

    ``pipe``: a FluxFillPipeline already built (with a ``model_id``), instead of :func:`build_pipeline`'s; the
    meta-device shape check (:mod:`renderer.meta_check`) passes FLUX.1 Fill built from its published config.
    """

    def __init__(self, cfg: RenderConfig, space: VisualSpace, checkpoint: str | None = None, pipe=None):
        self.cfg = cfg
        self.pipe = pipe if pipe is not None else build_pipeline(cfg.flux)
        self.space = space
        self.meta: dict[str, Any] = {}
        joint = self.pipe.transformer.config.joint_attention_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.flux.init_seed + 1)
            self.adapter = EmbeddingAdapter(
                space.dim, joint, cfg.adapter.num_tokens, cfg.adapter.hidden, zero_init=cfg.adapter.zero_init
            )
        self.adapter.to(self.pipe.transformer.device, self.pipe.transformer.dtype)
        if checkpoint is not None:
            self.meta = load_checkpoint(self, checkpoint)
        # built from config the transformer starts in train mode, and so do LoRA layers added to it: LoRA dropout
        # would act while rendering (training switches it back on)
        self.pipe.transformer.eval()

    @property
    def model_id(self) -> str:
        return self.pipe.model_id

    def add_lora(self, seed: int = 0) -> None:
        """Add a fresh peft LoRA (``cfg.lora``) to the transformer's attention projections.

        The ``gaussian`` init draws lora_A from the RNG: it is seeded (``seed``) on a forked RNG, so two runs of
        the same config start from the same LoRA (without it, resumed and uninterrupted runs could never match)
        and the caller's global RNG stream is left untouched.
        """
        from peft import LoraConfig

        lc = self.cfg.lora
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.pipe.transformer.add_adapter(
                LoraConfig(
                    r=lc.r,
                    lora_alpha=lc.alpha,
                    lora_dropout=lc.dropout,
                    init_lora_weights="gaussian",
                    target_modules=list(lc.target_modules),
                )
            )

    def encode(self, prompts: Sequence[str], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tiled prompts (B) + embeddings ``z`` [B, G, dim] -> (prompt_embeds [B, L+G*M, C], pooled [B, P], txt_ids).

        The text encoders are frozen (no grad); the adapter keeps its graph so training reaches it.
        """
        device = self.pipe.transformer.device
        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=list(prompts),
                prompt_2=None,
                device=device,
                max_sequence_length=self.cfg.flux.max_sequence_length,
            )
        tokens = self.adapter(z.to(device, self.adapter.down.weight.dtype))
        embeds, txt_ids = append_tokens(embeds, tokens)
        return embeds, pooled, txt_ids

    @torch.no_grad()
    def render(
        self,
        context: Sequence[Image.Image],
        captions: Sequence[str],
        z: torch.Tensor,
        seed: int,
    ) -> Image.Image:
        """One new keyframe: ``context`` keyframes (oldest first, 0..3), ``captions`` for context + new panel,
        ``z`` [dim] the new step's visual embedding. Returns the generated panel (width x height RGB)."""
        w, h = self.cfg.width, self.cfg.height
        check_size(size_multiple(self.pipe), w, h)
        canvas = make_canvas(context, 1, w, h)
        prompt = tiled_caption(captions)
        embeds, pooled, _ = self.encode([prompt], z.reshape(1, 1, -1))
        out = self.pipe(
            image=canvas.image,
            mask_image=canvas.mask,
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            height=h,
            width=canvas.image.width,
            num_inference_steps=self.cfg.flux.num_inference_steps,
            guidance_scale=self.cfg.flux.guidance_scale,
            max_sequence_length=self.cfg.flux.max_sequence_length,
            generator=torch.Generator("cpu").manual_seed(seed),
        ).images[0]
        return canvas.generated(out)[0]


# --------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    renderer: FluxRenderer,
    folder: Path,
    extra: dict[str, Any] | None = None,
    lora: dict[str, torch.Tensor] | None = None,
    adapter: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write LoRA weights, adapter weights and ``renderer.json`` (space, base model, configs) into ``folder``.

    ``lora`` (peft's saved layout) and ``adapter`` (the adapter's state dict): tensors to write as they are (the
    full state ``renderer train`` gathers from every process, fp32); by default the renderer's own, in fp32.
    """
    from peft.utils import get_peft_model_state_dict

    from auteur.io import save_safetensors

    if lora is None:
        lora = get_peft_model_state_dict(renderer.pipe.transformer)
        lora = {k: v.detach().to(torch.float32) for k, v in lora.items()}
    if adapter is None:
        adapter = {k: v.detach().to(torch.float32) for k, v in renderer.adapter.state_dict().items()}
    lora = {k: v.detach().cpu().contiguous() for k, v in lora.items()}
    adapter = {k: v.detach().cpu().contiguous() for k, v in adapter.items()}
    save_safetensors(lora, str(folder / LORA_FILE))
    save_safetensors(
        adapter, str(folder / ADAPTER_FILE), metadata={"space": renderer.space.name, "dim": str(renderer.space.dim)}
    )
    meta = {
        "format": "renderer.checkpoint/1",
        "base_model": renderer.model_id,
        "space": renderer.space.to_json(),
        "lora": to_dict(renderer.cfg.lora),
        "adapter": to_dict(renderer.cfg.adapter),
        **(extra or {}),
    }
    (folder / CKPT_META).write_text(json.dumps(meta, indent=2) + "\n")


def read_checkpoint_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CKPT_META
    if not path.is_file():
        raise RendererError(
            f"renderer checkpoint not found: {folder} (no {CKPT_META}; give RUN/final of `renderer train`)"
        )
    return json.loads(path.read_text())


def load_checkpoint(renderer: FluxRenderer, folder: str | Path) -> dict[str, Any]:
    """Load LoRA + adapter from ``folder`` into ``renderer``; the base model and visual space must match."""
    from safetensors.torch import load_file

    from auteur.config import from_dict
    from renderer.config import AdapterConfig, LoraConfig

    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    space = VisualSpace(meta["space"]["name"], int(meta["space"]["dim"]))
    space.check_same(renderer.space, what=f"the plan's embeddings (checkpoint {folder})")
    if meta["base_model"] != renderer.model_id:
        raise RendererError(f"checkpoint {folder} was trained on {meta['base_model']}, not {renderer.model_id}")
    renderer.cfg.lora = from_dict(LoraConfig, meta["lora"])
    renderer.cfg.adapter = from_dict(AdapterConfig, meta["adapter"])
    joint = renderer.pipe.transformer.config.joint_attention_dim
    a = renderer.cfg.adapter
    renderer.adapter = EmbeddingAdapter(space.dim, joint, a.num_tokens, a.hidden, zero_init=a.zero_init)
    renderer.adapter.load_state_dict(load_file(str(folder / ADAPTER_FILE)))
    renderer.adapter.to(renderer.pipe.transformer.device, renderer.pipe.transformer.dtype)
    renderer.add_lora()
    training.load_lora_state(renderer.pipe.transformer, load_file(str(folder / LORA_FILE)), folder, RendererError)
    return meta
