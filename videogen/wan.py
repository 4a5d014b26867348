"""Wan 2.1 image-to-video, conditioned on the director's embeddings (VideoAuteur §4.3).

The diffusers :class:`~diffusers.WanImageToVideoPipeline` takes the first frame (``image``: the step's
keyframe, VAE-encoded into the conditioning latents) and ``image_embeds`` (image tokens for the transformer's
image cross-attention). Here ``image_embeds`` come from the :class:`~videogen.projector.EmbeddingProjector`
applied to the director's visual state of the step, and the prompt is the step's caption.

Components:

- ``tiny`` (tests): the real classes built from config at toy sizes after ``torch.manual_seed(0)``, as
  diffusers' ``tests/pipelines/wan/test_wan_image_to_video.py`` ``get_dummy_components`` does; the tokenizer is
  a byte-level tokenizer built locally (nothing is fetched). Random weights: what they generate means nothing.
- ``pretrained`` (paper): a diffusers-layout Wan 2.1 I2V checkpoint from a local folder (``wan.model_id``).

Prompts are encoded here (as the pipeline's ``_get_t5_prompt_embeds`` does) and passed as ``prompt_embeds``,
so the pipeline's text cleaning (which needs ``ftfy``) is not involved.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from auteur import training
from auteur.config import to_dict
from auteur.io import atomic_dir
from auteur.plan import VisualSpace
from auteur.tokenizers import byte_level_tokenizer
from videogen.config import LoraConfig, VideogenConfig, WanConfig
from videogen.errors import VideogenError
from videogen.projector import EmbeddingProjector

log = logging.getLogger(__name__)

CKPT_FORMAT = "videogen/1"
CKPT_META = "videogen.json"
PROJECTOR_FILE = "projector.safetensors"
LORA_FILE = "lora.safetensors"
VAE_TEMPORAL = 4  # Wan's VAE compresses 4 frames into one latent frame after the first
#: the text length Wan I2V must be given: diffusers' Wan attention takes the tokens before the last 512 of the
#: cross-attention context (image tokens ‖ text tokens) as the image tokens, whatever the text's length
WAN_TEXT_TOKENS = 512


def _pipeline_class():
    from diffusers import WanImageToVideoPipeline

    class EmbeddingWanI2VPipeline(WanImageToVideoPipeline):
        """Wan I2V that takes the first frame *and* precomputed ``image_embeds``.

        diffusers' ``check_inputs`` refuses ``image`` together with ``image_embeds``, yet ``__call__`` needs
        ``image`` for the first-frame latents either way; only that one check is relaxed here.
        """

        def check_inputs(self, prompt, negative_prompt, image, height, width, prompt_embeds=None,
                         negative_prompt_embeds=None, image_embeds=None, callback_on_step_end_tensor_inputs=None,
                         guidance_scale_2=None):  # fmt: skip
            if image is None:
                raise ValueError("EmbeddingWanI2VPipeline needs the first frame (`image`)")
            return super().check_inputs(prompt, negative_prompt, image, height, width, prompt_embeds,
                                        negative_prompt_embeds, None, callback_on_step_end_tensor_inputs,
                                        guidance_scale_2)  # fmt: skip

    return EmbeddingWanI2VPipeline


def check_frames(frames: int) -> None:
    """Wan's VAE takes ``4k + 1`` frames; raise VideogenError otherwise."""
    if frames < 1 or (frames - 1) % VAE_TEMPORAL != 0:
        lo = max(1, (frames - 1) // VAE_TEMPORAL * VAE_TEMPORAL + 1)
        raise VideogenError(
            f"Wan cannot generate {frames} frames: its VAE needs (frames - 1) divisible by {VAE_TEMPORAL} "
            f"(e.g. {lo} or {lo + VAE_TEMPORAL})"
        )


def check_text_tokens(max_sequence_length: int, image_dim: int | None) -> None:
    """VideogenError unless an I2V transformer (``image_dim`` set) gets prompts of exactly ``WAN_TEXT_TOKENS``:
    with another length diffusers would split image from text tokens at the wrong place, silently."""
    if image_dim is not None and max_sequence_length != WAN_TEXT_TOKENS:
        raise VideogenError(
            f"wan.max_sequence_length={max_sequence_length}: Wan I2V needs {WAN_TEXT_TOKENS} text tokens (its "
            f"attention takes all but the last {WAN_TEXT_TOKENS} context tokens as image tokens)"
        )


#: what videogen loads from a local diffusers Wan 2.1 I2V folder (it also holds ``image_encoder/`` and
#: ``image_processor/``, unused: the image tokens come from the projector)
WAN_PARTS = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
WAN_WEIGHTS = ("text_encoder", "vae", "transformer")


def _load_pretrained(
    cfg: WanConfig, dtype: torch.dtype, parts: Sequence[str] = WAN_PARTS, device: torch.device | None = None
) -> dict[str, Any]:
    """The components ``parts`` from ``cfg.model_id`` (a local diffusers folder, or a hub id already in the local
    cache).

    The transformer and text encoder load in ``dtype``, the VAE in float32 (as diffusers advises for Wan). The
    scheduler is the folder's own class (UniPC in the published Wan folders; a FlowMatchEuler config read into
    another class would lose its shift) with its shift set to ``cfg.flow_shift``. With ``device`` the models
    load straight onto it (``device_map``): eight training processes do not each hold a 14B copy in host memory
    on the way to their GPU."""
    import diffusers
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    src, kw = cfg.model_id, {"local_files_only": True}
    place = {} if device is None else {"device_map": {"": device}}
    root = Path(src).expanduser()
    if root.is_dir():  # an incomplete folder is named here, before the libraries log errors of their own
        lacking = training.model_folder_gaps(root, WAN_PARTS, WAN_WEIGHTS)
        if lacking:
            raise VideogenError(f"wan.model_id={src}: not a complete diffusers Wan folder (no {', '.join(lacking)})")
    loaders = {
        "tokenizer": lambda: AutoTokenizer.from_pretrained(src, subfolder="tokenizer", **kw),
        "text_encoder": lambda: UMT5EncoderModel.from_pretrained(
            src, subfolder="text_encoder", dtype=dtype, **kw, **place
        ),
        "vae": lambda: AutoencoderKLWan.from_pretrained(src, subfolder="vae", dtype=torch.float32, **kw, **place),
        "transformer": lambda: WanTransformer3DModel.from_pretrained(
            src, subfolder="transformer", dtype=dtype, **kw, **place
        ),
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler.load_config(src, subfolder="scheduler", **kw),
    }
    comps: dict[str, Any] = {}
    for part in parts:
        try:
            comps[part] = loaders[part]()
        except (OSError, ValueError) as e:
            raise VideogenError(f"cannot load Wan from {src} ({part}/): {str(e).splitlines()[0]}") from None
    if "scheduler" in comps:
        sched = comps["scheduler"]
        cls = getattr(diffusers, str(sched.get("_class_name")), None)
        shift = "flow_shift" if "flow_shift" in sched else "shift"
        if cls is None or shift not in inspect.signature(cls.__init__).parameters:
            raise VideogenError(f"{src}: scheduler {sched.get('_class_name')!r} is not a flow-matching scheduler")
        comps["scheduler"] = cls.from_config(sched, **{shift: cfg.flow_shift})
    for frozen in ("text_encoder", "vae"):
        if frozen in comps:
            comps[frozen].eval()
    return comps


def build_components(
    cfg: WanConfig,
    dtype: torch.dtype = torch.float32,
    parts: Sequence[str] = WAN_PARTS,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """The pipeline's components named in ``parts`` (all by default; training loads the frozen encoders and the
    transformer at different times): ``tiny`` from config (each seeded on its own, so any subset is the same
    weights; float32), or ``pretrained`` from a local folder (transformer and text encoder in ``dtype``). With
    ``device`` the models are placed on it."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler

    if cfg.source == "pretrained":
        if not cfg.model_id:
            raise VideogenError("wan.source=pretrained needs wan.model_id (a local diffusers Wan 2.1 I2V folder)")
        return _load_pretrained(cfg, dtype, parts, device)
    comps: dict[str, Any] = {}
    if "vae" in parts:
        torch.manual_seed(0)
        comps["vae"] = AutoencoderKLWan(
            base_dim=cfg.vae_base_dim,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ).eval()
    tokenizer = byte_level_tokenizer()
    if "tokenizer" in parts:
        comps["tokenizer"] = tokenizer
    if "text_encoder" in parts:
        comps["text_encoder"] = _tiny_text_encoder(cfg, tokenizer)
    if "transformer" in parts:
        comps["transformer"] = _tiny_transformer(cfg)
    if "scheduler" in parts:
        comps["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=cfg.flow_shift)
    if device is not None:
        for part in ("vae", "text_encoder", "transformer"):
            if part in comps:
                comps[part].to(device)
    return comps


def _tiny_text_encoder(cfg: WanConfig, tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=cfg.text_dim,
            d_kv=8,
            d_ff=2 * cfg.text_dim,
            num_layers=cfg.text_layers,
            num_heads=4,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            dropout_rate=0.0,
        )
    ).eval()  # frozen: a module built from config starts in train mode, and T5's dropout would draw from the RNG


def _tiny_transformer(cfg: WanConfig):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=36,  # 16 noisy latents + 4 mask + 16 first-frame latents
        out_channels=16,
        text_dim=cfg.text_dim,
        freq_dim=256,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=cfg.image_dim,
    )


def encode_prompts(tokenizer, text_encoder, texts: list[str], max_len: int) -> torch.Tensor:
    """T5/UMT5 prompt embeddings as Wan expects them: [B, max_len, text_dim], zero past each prompt's tokens."""
    enc = tokenizer(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    ids, mask = enc.input_ids.to(text_encoder.device), enc.attention_mask.to(text_encoder.device)
    with torch.no_grad():
        hidden = text_encoder(ids, mask).last_hidden_state
    return hidden * mask[..., None].to(hidden.dtype)


def add_lora(transformer, cfg: LoraConfig) -> None:
    """Attach a peft LoRA adapter to the transformer (only the adapter's weights train)."""
    from peft import LoraConfig as PeftLoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(
        PeftLoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=list(cfg.target_modules),
            init_lora_weights=True,
        )  # fmt: skip
    )


def lora_state(transformer) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(transformer).items()}


def save_videogen_checkpoint(folder: Path, transformer, projector: EmbeddingProjector, cfg: VideogenConfig,
                             space: VisualSpace, **meta: Any) -> Path:  # fmt: skip
    """Write what training changes (LoRA, projector) and what it needs to be rebuilt into ``folder``."""
    with atomic_dir(folder) as tmp:
        write_videogen_files(tmp, lora_state(transformer), dict(projector.state_dict()), cfg, space, **meta)
    return folder


def write_videogen_files(folder: Path, lora: dict[str, torch.Tensor], projector: dict[str, torch.Tensor],
                         cfg: VideogenConfig, space: VisualSpace, **meta: Any) -> None:  # fmt: skip
    """The checkpoint files into the existing folder ``folder``: ``lora`` (peft's saved layout, no adapter name),
    ``projector`` (its state dict) and ``videogen.json`` (what rebuilds the model, and ``meta``)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in lora.items()}, str(folder / LORA_FILE))
    save_file({k: v.detach().contiguous().cpu() for k, v in projector.items()}, str(folder / PROJECTOR_FILE))
    info = {"format": CKPT_FORMAT, "space": space.to_json(), "wan": to_dict(cfg.wan),
            "projector": to_dict(cfg.projector), "lora": to_dict(cfg.lora), **meta}  # fmt: skip
    (folder / CKPT_META).write_text(json.dumps(info, indent=2) + "\n")


def read_checkpoint_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CKPT_META
    if not path.is_file():
        raise VideogenError(f"videogen checkpoint not found: {folder} (no {CKPT_META} in it)")
    meta = json.loads(path.read_text())
    if meta.get("format") != CKPT_FORMAT:
        raise VideogenError(f"{path}: unsupported format {meta.get('format')!r}")
    for f in (PROJECTOR_FILE, LORA_FILE):
        if not (folder / f).is_file():
            raise VideogenError(f"videogen checkpoint {folder} is incomplete: {f} missing")
    return meta


def check_checkpoint_space(meta: dict[str, Any], space: VisualSpace, folder: str | Path) -> None:
    """Raise unless the plan's embeddings (``space``) are in the space the checkpoint ``meta`` was trained on."""
    trained = VisualSpace(meta["space"]["name"], int(meta["space"]["dim"]))
    trained.check_same(space, what=f"the plan's embeddings (checkpoint {folder})")


class WanGenerator:
    """Clips from (keyframe, caption, embedding): Wan I2V + the embedding projector (+ a trained checkpoint)."""

    def __init__(self, cfg: VideogenConfig, space: VisualSpace):
        from safetensors.torch import load_file

        from auteur.config import from_dict

        self.cfg = cfg
        meta = None
        if cfg.checkpoint:
            meta = read_checkpoint_meta(cfg.checkpoint)
            check_checkpoint_space(meta, space, cfg.checkpoint)
            # the checkpoint's model and projector shapes win over the preset's
            cfg.wan = from_dict(WanConfig, {**to_dict(cfg.wan), **meta["wan"], "source": cfg.wan.source,
                                            "model_id": cfg.wan.model_id})  # fmt: skip
            cfg.projector = from_dict(type(cfg.projector), meta["projector"])
            cfg.lora = from_dict(LoraConfig, meta["lora"])
        comps = build_components(cfg.wan, torch.bfloat16 if cfg.precision == "bf16" else torch.float32)
        self.tokenizer, self.text_encoder = comps["tokenizer"], comps["text_encoder"]
        image_dim = comps["transformer"].config.image_dim
        if image_dim is None:
            raise VideogenError("this Wan transformer takes no image embeddings (not a Wan 2.1 I2V model)")
        check_text_tokens(cfg.wan.max_sequence_length, image_dim)
        torch.manual_seed(cfg.seed)
        self.projector = EmbeddingProjector(space.dim, image_dim, cfg.projector.num_tokens, cfg.projector.hidden)
        self.trained = meta is not None
        if meta is not None:
            ckpt = Path(cfg.checkpoint)
            add_lora(comps["transformer"], cfg.lora)
            training.load_lora_state(comps["transformer"], load_file(str(ckpt / LORA_FILE)), ckpt, VideogenError)
            self.projector.load_state_dict(load_file(str(ckpt / PROJECTOR_FILE)))
        comps["transformer"].eval()  # built from config it starts in train mode: LoRA dropout would act here
        self.pipe = _pipeline_class()(image_processor=None, image_encoder=None, **comps)
        self.pipe.set_progress_bar_config(disable=True)
        self.projector.eval()
        if torch.cuda.is_available():  # on CPU everything stays where it loaded
            self.pipe.to("cuda")
            self.projector.to("cuda")
        self.model_id = cfg.wan.model_id if cfg.wan.source == "pretrained" else "wan2.1-i2v-tiny-random"

    @torch.no_grad()
    def clip(self, keyframe: Image.Image, caption: str, embedding: torch.Tensor, frames: int, seed: int) -> np.ndarray:
        """One clip: [frames, H, W, 3] uint8 RGB; ``embedding``: [dim] (the step's visual state)."""
        check_frames(frames)
        w = self.cfg.wan
        prompt = encode_prompts(self.tokenizer, self.text_encoder, [caption], w.max_sequence_length)
        negative = encode_prompts(self.tokenizer, self.text_encoder, [""], w.max_sequence_length)
        image_embeds = self.projector(embedding[None].float().to(self.projector.tokens.device))
        out = self.pipe(
            image=keyframe.convert("RGB").resize((w.width, w.height), Image.Resampling.BICUBIC),
            prompt_embeds=prompt,
            negative_prompt_embeds=negative,
            image_embeds=image_embeds,
            height=w.height,
            width=w.width,
            num_frames=frames,
            num_inference_steps=w.num_inference_steps,
            guidance_scale=w.guidance_scale,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            max_sequence_length=w.max_sequence_length,
        ).frames[0]
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
