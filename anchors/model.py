"""The StoryAnchors model: a video diffusion transformer that generates all story frames jointly.

StoryAnchors (Wang et al., 2025, "StoryAnchors: Generating Consistent Multi-Scene Story Frames for
Long-Form Narratives", §2) treats a story's frames as the frames of one video: a video diffusion transformer
denoises them together, so every frame attends to every other (bidirectionally), and

- the patch embedding is widened to take ``[f, 2c+1, h, w]``: the noisy latents, the latents of the
  condition frames (zeros where a frame is not given) and a mask channel (0 = generate, non-zero = given),
  which is how one model does generation, editing (regenerate the frames around a kept one) and
  continuation (condition on the first frames);
- scalar conditions (frames per second, frame interval, motion degree, width, height, number of story
  frames) are embedded and added to the timestep embedding that drives AdaLN.

The paper builds on Step-Video-T2V, which diffusers does not have; here diffusers'
``WanTransformer3DModel`` stands in (same family: a DiT with 3-D RoPE, text cross-attention and AdaLN
timestep modulation), with ``AutoencoderKLWan`` as the VAE and a T5 encoder for text. Each story frame is
one *latent* frame: frames are encoded one at a time by the (causal) Wan VAE, whose first frame is never
temporally compressed, so a story of N frames is a latent video of N frames.

Shapes: ``B`` batch, ``C`` latent channels (``vae.config.z_dim``), ``F`` story frames, ``h, w`` latent
height and width (pixels / 8), ``L`` text tokens, ``D`` text width.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anchors.config import AnchorsError, ModelConfig
from auteur.tokenizers import byte_level_tokenizer
from auteur.training import model_folder_gaps

log = logging.getLogger(__name__)

CONDITION_NAMES = ("fps", "frame_interval", "motion", "width", "height", "num_frames")
FORMAT = "anchors/1"
META = "anchors.json"
WEIGHTS = "model.safetensors"


# --------------------------------------------------------------------------------------------- text


class TextEncoder(nn.Module):
    """Prompts -> ``[B, L, D]`` T5 states, padded to ``max_tokens`` with zeros past each prompt (as Wan)."""

    def __init__(self, tokenizer, encoder: nn.Module, max_tokens: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.max_tokens = max_tokens

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        enc = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return states * mask.unsqueeze(-1).to(states.dtype)


# --------------------------------------------------------------------------------------------- layers


class WidenedPatchEmbedding(nn.Module):
    """The transformer's patch embedding widened from ``C`` to ``2C+1`` input channels (StoryAnchors §2.1).

    Input ``[B, 2C+1, F, h, w]`` = noisy latents ‖ condition latents ‖ mask. The original convolution
    (``base``, pretrained) sees the first ``C`` channels; the ``C+1`` new channels go through ``extra``, a
    bias-free convolution of the same kernel whose weights start at zero. The sum is exactly one
    convolution with the concatenated weight ``[base.weight ‖ extra.weight]`` (:meth:`as_single_conv`), but
    kept split so that with zero new weights the output is *bit-identical* to the original model's: one
    conv over zero-padded channels would reorder the float accumulation.
    """

    def __init__(self, base: nn.Conv3d) -> None:
        super().__init__()
        self.base = base
        self.extra = nn.Conv3d(
            base.in_channels + 1, base.out_channels, kernel_size=base.kernel_size, stride=base.stride, bias=False
        )
        nn.init.zeros_(self.extra.weight)
        self.latent_channels = base.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [B, 2C+1, F, h, w] -> [B, inner, F/p_t, h/p_h, w/p_w]."""
        c = self.latent_channels
        if x.shape[1] != 2 * c + 1 or self.extra.in_channels != c + 1:
            raise AnchorsError(
                f"the widened patch embedding takes 2C+1 = {2 * c + 1} channels (C = {c} in the pretrained "
                f"convolution, {self.extra.in_channels} in the new one), got {x.shape[1]}"
            )
        return self.base(x[:, :c]) + self.extra(x[:, c:])

    def as_single_conv(self) -> nn.Conv3d:
        """The equivalent single ``Conv3d`` with ``2C+1`` input channels (what a checkpoint converter writes)."""
        conv = nn.Conv3d(2 * self.latent_channels + 1, self.base.out_channels, self.base.kernel_size, self.base.stride)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([self.base.weight, self.extra.weight], dim=1))
            conv.bias.copy_(self.base.bias)
        return conv


def sinusoidal(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``values`` [B] -> [B, dim] sinusoidal features (the timestep embedding's: cos ‖ sin, max period 1e4)."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(values.float(), dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class ConditionEmbedding(nn.Module):
    """Scalar video conditions -> one ``[B, dim]`` vector added to the timestep embedding (StoryAnchors §2.1).

    One small MLP per condition (``CONDITION_NAMES``: fps, frame interval, motion degree, width, height,
    number of story frames) on its sinusoidal features; the outputs are summed. Each MLP's last layer is
    zero-initialised, so a pretrained transformer starts exactly as it was.
    """

    def __init__(self, dim: int, freq_dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlps = nn.ModuleDict(
            {n: nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, dim)) for n in CONDITION_NAMES}
        )
        for mlp in self.mlps.values():
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        """``conditions`` [B, 6] in ``CONDITION_NAMES`` order -> [B, dim]."""
        out = 0
        for i, mlp in enumerate(self.mlps.values()):
            feats = sinusoidal(conditions[:, i], self.freq_dim).to(mlp[0].weight.dtype)
            out = out + mlp(feats)
        return out


class StoryTransformer(nn.Module):
    """A ``WanTransformer3DModel`` with the widened patch embedding and the condition embeddings.

    The condition embedding is added to ``temb``, the output of Wan's ``condition_embedder.time_embedder``,
    by a forward hook on that module. ``temb`` is the one tensor from which Wan derives all AdaLN
    modulation (``time_proj(silu(temb))`` for every block, and the output norm's shift/scale), so adding
    there is exactly "added to the timestep embedding before AdaLN". A hook keeps diffusers' forward
    untouched (a subclass would have to copy its ~100 lines and track every diffusers release); the
    embedding for the current call is handed to the hook through :meth:`_conditioned`, which clears it
    afterwards, so the bare transformer behaves as stock diffusers outside this module's ``forward``.
    """

    def __init__(self, transformer: nn.Module, freq_dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        if not isinstance(transformer.patch_embedding, WidenedPatchEmbedding):
            transformer.patch_embedding = WidenedPatchEmbedding(transformer.patch_embedding)
        self.transformer = transformer
        self.latent_channels = transformer.patch_embedding.latent_channels
        self.cond_embed = ConditionEmbedding(inner, freq_dim, hidden)
        self._pending: torch.Tensor | None = None
        transformer.condition_embedder.time_embedder.register_forward_hook(self._add_conditions)

    def _add_conditions(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if self._pending is None:
            return output
        if self._pending.shape != output.shape:  # never broadcast: [B, 1] would silently add one scalar per sample
            raise AnchorsError(
                f"the condition embedding {list(self._pending.shape)} does not match the timestep embedding "
                f"{list(output.shape)} it is added to"
            )
        return output + self._pending.to(output.dtype)

    @contextmanager
    def _conditioned(self, emb: torch.Tensor):
        self._pending = emb
        try:
            yield
        finally:
            self._pending = None

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer.config.patch_size)

    @property
    def positions(self) -> int:
        """Patches along each axis the 3-D RoPE can position (Wan's ``rope_max_seq_len``)."""
        return int(self.transformer.config.rope_max_seq_len)

    def forward(
        self,
        noisy: torch.Tensor,
        cond_latents: torch.Tensor,
        mask: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        conditions: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the flow-matching velocity of every story frame.

        ``noisy`` [B, C, F, h, w]; ``cond_latents`` [B, C, F, h, w] (the given frames' clean latents; other
        frames are zeroed here whatever they hold); ``mask`` [B, F] (0 = generate, non-zero = given);
        ``timestep`` [B] in [0, 1000]; ``text`` [B, L, D]; ``conditions`` [B, 6] -> velocity [B, C, F, h, w].
        """
        b, c, f, h, w = noisy.shape
        if c != self.latent_channels or cond_latents.shape != noisy.shape or tuple(mask.shape) != (b, f):
            raise AnchorsError(
                f"story latents {list(noisy.shape)}, condition latents {list(cond_latents.shape)} and mask "
                f"{list(mask.shape)} must be [B, C, F, h, w], the same, and [B, F], with C = {self.latent_channels} "
                "(the transformer's latent channels)"
            )
        m = mask.to(noisy.dtype).view(b, 1, f, 1, 1)
        given = (m != 0).to(noisy.dtype)
        x = torch.cat([noisy, cond_latents * given, m.expand(b, 1, f, h, w)], dim=1)
        with self._conditioned(self.cond_embed(conditions)):
            return self.transformer(x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]


# --------------------------------------------------------------------------------------------- bundle


@dataclass
class Anchors:
    """The model's parts: the story transformer (trained), the VAE and the text encoder (frozen)."""

    net: StoryTransformer
    vae: nn.Module
    text: TextEncoder
    cfg: ModelConfig
    model_id: str

    def to(self, device: str | torch.device) -> Anchors:
        """Move every part to ``device`` (generation puts its tensors where the transformer is)."""
        for m in (self.net, self.vae, self.text.encoder):
            m.to(device)
        return self

    @property
    def spatial_factor(self) -> int:
        return spatial_factor(self.vae)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.vae.config.z_dim
        mean = torch.tensor(self.vae.config.latents_mean[:z], dtype=like.dtype, device=like.device)
        std = torch.tensor(self.vae.config.latents_std[:z], dtype=like.dtype, device=like.device)
        return mean.view(1, z, 1, 1, 1), std.view(1, z, 1, 1, 1)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames`` [B, F, 3, H, W] in [-1, 1] -> normalised latents [B, C, F, h, w].

        Each story frame is encoded alone (a one-frame video), so each is one latent frame."""
        b, f = frames.shape[:2]
        x = frames.flatten(0, 1).unsqueeze(2)  # [B*F, 3, 1, H, W]
        z = self.vae.encode(x.to(next(self.vae.parameters()).dtype)).latent_dist.mode()  # [B*F, C, 1, h, w]
        mean, std = self._stats(z)
        z = (z - mean) / std
        return z.squeeze(2).unflatten(0, (b, f)).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, F, h, w] -> frames [B, F, 3, H, W] in [-1, 1] (each decoded alone)."""
        b, _, f = latents.shape[:3]
        z = latents.permute(0, 2, 1, 3, 4).flatten(0, 1).unsqueeze(2)  # [B*F, C, 1, h, w]
        mean, std = self._stats(z)
        x = self.vae.decode(z * std + mean, return_dict=False)[0]  # [B*F, 3, 1, H, W]
        return x.squeeze(2).clamp(-1, 1).unflatten(0, (b, f))


def spatial_factor(vae: nn.Module) -> int:
    """Pixels per latent pixel of a Wan VAE (its recorded ``scale_factor_spatial``, else from ``dim_mult``)."""
    recorded = vae.config.scale_factor_spatial
    return int(recorded) if recorded else 2 ** (len(vae.config.dim_mult) - 1)


def _tiny_components(cfg: ModelConfig) -> tuple[nn.Module, nn.Module, TextEncoder]:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    t, v, x = cfg.transformer, cfg.vae, cfg.text
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKLWan(
        base_dim=v.base_dim,
        z_dim=v.z_dim,
        dim_mult=list(v.dim_mult),
        num_res_blocks=v.num_res_blocks,
        temperal_downsample=[False] + [True] * (len(v.dim_mult) - 2),
        latents_mean=[0.0] * v.z_dim,
        latents_std=[1.0] * v.z_dim,
        scale_factor_spatial=2 ** (len(v.dim_mult) - 1),
    )
    tokenizer = byte_level_tokenizer(x.max_tokens)
    torch.manual_seed(cfg.seed)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=x.d_model,
            d_kv=x.d_kv,
            d_ff=x.d_ff,
            num_layers=x.num_layers,
            num_heads=x.num_heads,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    torch.manual_seed(cfg.seed)
    transformer = WanTransformer3DModel(
        patch_size=tuple(t.patch_size),
        num_attention_heads=t.num_attention_heads,
        attention_head_dim=t.attention_head_dim,
        in_channels=v.z_dim,
        out_channels=v.z_dim,
        text_dim=x.d_model,
        freq_dim=t.freq_dim,
        ffn_dim=t.ffn_dim,
        num_layers=t.num_layers,
        rope_max_seq_len=t.rope_max_seq_len,
    )
    return transformer, vae, TextEncoder(tokenizer, t5, x.max_tokens)


#: text encoders a diffusers Wan folder may hold (Wan 2.1 ships UMT5; its layers each have their own
#: relative-attention bias, which a T5 class would silently drop)
TEXT_ENCODERS = ("UMT5EncoderModel", "T5EncoderModel")


def _pretrained_components(
    cfg: ModelConfig, text_dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, nn.Module, TextEncoder]:
    """Transformer and VAE (float32) and text encoder (``text_dtype``: loaded so, never held in float32 first) from
    a local diffusers Wan folder (``cfg.pretrained``)."""
    import transformers
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer

    if not cfg.pretrained:
        raise AnchorsError(
            "model.kind=wan needs model.pretrained=PATH: a local diffusers Wan folder "
            "(e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers downloaded beforehand); nothing is fetched at run time"
        )
    root = Path(cfg.pretrained).expanduser()
    weighted = ("transformer", "vae", "text_encoder")
    missing = model_folder_gaps(root, (*weighted, "tokenizer"), weighted)
    if missing:
        raise AnchorsError(
            f"model.pretrained={cfg.pretrained}: not a complete local diffusers Wan folder (missing "
            f"{', '.join(missing)}); download e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers and give its path"
        )
    try:
        arch = (json.loads((root / "text_encoder" / "config.json").read_text()).get("architectures") or ["?"])[0]
        if arch not in TEXT_ENCODERS:
            raise AnchorsError(f"{root / 'text_encoder'}: a {arch}, not one of {', '.join(TEXT_ENCODERS)}")
        transformer = WanTransformer3DModel.from_pretrained(root, subfolder="transformer", dtype=torch.float32)
        vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        t5 = getattr(transformers, arch).from_pretrained(root, subfolder="text_encoder", dtype=text_dtype)
    except (OSError, ValueError) as e:  # an unreadable config or weights file
        raise AnchorsError(f"cannot load Wan from {cfg.pretrained}: {str(e).splitlines()[0]}") from None
    return transformer, vae, TextEncoder(tokenizer, t5, cfg.text.max_tokens)


def check_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The meta of an anchors checkpoint folder; AnchorsError if it is not one."""
    folder = Path(folder)
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise AnchorsError(f"checkpoint {folder} not found or not an anchors checkpoint ({META}, {WEIGHTS})")
    meta = json.loads((folder / META).read_text())
    if meta.get("format") != FORMAT:
        raise AnchorsError(f"{folder / META}: unsupported format {meta.get('format')!r}")
    return meta


def load_weights(net: StoryTransformer, folder: str | Path) -> None:
    """Load a checkpoint's story-transformer weights into ``net`` (same architecture, checked)."""
    from safetensors.torch import load_file

    try:
        net.load_state_dict(load_file(str(Path(folder) / WEIGHTS)))
    except RuntimeError as e:
        raise AnchorsError(f"checkpoint {folder} does not fit this model: {str(e).splitlines()[0]}") from None


def build_anchors(
    cfg: ModelConfig,
    checkpoint: str | Path | None = None,
    components: tuple[nn.Module, nn.Module, TextEncoder, str] | None = None,
    text_dtype: torch.dtype = torch.float32,
) -> Anchors:
    """The anchors model as ``cfg`` says, with a trained checkpoint applied when given. The frozen text encoder is
    in ``text_dtype`` (``anchors train`` with ``precision: bf16``: bfloat16, half the memory of Wan's 5.7B-parameter
    UMT5); the story transformer and the VAE are float32 (diffusers' Wan pipelines keep the VAE in float32: it is
    small, and its latents are the training targets).

    ``components``: (transformer, VAE, text encoder, model id) already built, instead of loading or building
    them as ``cfg.kind`` says; the meta-device shape check (:mod:`anchors.meta_check`) passes Wan 2.1 T2V 1.3B
    built from its published config. The size and RoPE checks and the widening apply all the same."""
    if checkpoint is not None:
        check_checkpoint(checkpoint)
    if components is not None:
        transformer, vae, text, model_id = components
    elif cfg.kind == "wan":
        transformer, vae, text = _pretrained_components(cfg, text_dtype)
        model_id = str(cfg.pretrained)
    else:
        transformer, vae, text = _tiny_components(cfg)
        text.encoder.to(dtype=text_dtype)
        model_id = f"tiny-random-wan/seed{cfg.seed}"
    factor = spatial_factor(vae)
    p = transformer.config.patch_size
    if cfg.height % (factor * p[1]) or cfg.width % (factor * p[2]):
        raise AnchorsError(
            f"model.height x model.width = {cfg.height}x{cfg.width} must be multiples of "
            f"{factor * p[1]}x{factor * p[2]} (VAE compression x patch size)"
        )
    rope = transformer.config.rope_max_seq_len
    if max(cfg.height // (factor * p[1]), cfg.width // (factor * p[2])) > rope:
        raise AnchorsError(
            f"model.height x model.width = {cfg.height}x{cfg.width}: the transformer's RoPE can position at most "
            f"{rope * factor * p[1]}x{rope * factor * p[2]} pixels (rope_max_seq_len {rope})"
        )
    torch.manual_seed(cfg.seed)  # the new (zero-initialised) parts' hidden layers are reproducible
    net = StoryTransformer(transformer, cfg.cond_freq_dim, cfg.cond_hidden)
    if checkpoint is not None:
        load_weights(net, checkpoint)
    for m in (vae, text):
        m.requires_grad_(False)
        m.eval()
    net.eval()
    return Anchors(net=net, vae=vae, text=text, cfg=cfg, model_id=model_id)


def frame_limits(cfg: ModelConfig) -> tuple[int, int]:
    """(temporal patch size, RoPE positions) of the transformer ``cfg`` describes, known before it is built:
    from ``cfg.transformer`` (tiny), or the local Wan folder's ``transformer/config.json`` (wan; diffusers'
    Wan defaults when it cannot be read, and :func:`build_anchors` then names the problem)."""
    t = cfg.transformer
    if cfg.kind != "wan":
        return int(t.patch_size[0]), int(t.rope_max_seq_len)
    try:
        data = json.loads((Path(cfg.pretrained).expanduser() / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        data = {}
    return int(data.get("patch_size", [1])[0]), int(data.get("rope_max_seq_len", 1024))


def check_num_frames(n: int, cfg: ModelConfig, patch_t: int, positions: int | None = None) -> None:
    """AnchorsError unless the model can generate ``n`` story frames jointly: a multiple of the temporal patch
    size, at most ``model.max_frames``, and at most the ``positions`` latent frames its RoPE can place."""
    if n < 1:
        raise AnchorsError(f"the number of story frames must be at least 1, got {n}")
    if n % patch_t:
        raise AnchorsError(f"{n} story frames: the transformer's temporal patch size is {patch_t}; use a multiple")
    if n > cfg.max_frames:
        raise AnchorsError(f"{n} story frames: this model takes at most {cfg.max_frames} (model.max_frames)")
    if positions is not None and n // patch_t > positions:
        raise AnchorsError(
            f"{n} story frames: the transformer's RoPE can position at most {positions * patch_t} frames jointly "
            f"(rope_max_seq_len {positions}); lower model.max_frames (longer stories are generated in windows)"
        )


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "CONDITION_NAMES",
    "Anchors",
    "ConditionEmbedding",
    "StoryTransformer",
    "TextEncoder",
    "WidenedPatchEmbedding",
    "build_anchors",
    "check_num_frames",
    "frame_limits",
]
