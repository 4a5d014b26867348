"""Clip captioning with a vision-language model (VLM) through transformers.

VideoAuteur's CookGen gives every step clip a caption of what the camera sees (about 40 to 70 words: the
shot, the cook, the ingredients, the tools, the action), written by a VLM from frames of the clip. This
module runs that VLM:

    cap = load_captioner(CaptionConfig(backend="qwen2_vl", model_path="/models/Qwen2-VL-7B-Instruct"))
    text = cap.caption(frames)            # frames: list of PIL images from ONE clip
    texts = cap.caption_batch([frames_a, frames_b])

Backends: ``qwen2_vl`` (``Qwen2VLForConditionalGeneration``) and ``llava_next``
(``LlavaNextForConditionalGeneration``), each with its ``AutoProcessor``. The frames are given to the model as
that many images in one user turn (followed by the prompt), the checkpoint's own chat template builds the
prompt, decoding is greedy, and only the new tokens are decoded. ``backend="none"`` means no captioner:
:func:`load_captioner` returns ``None``.

Honesty notes:

* Real captions need the paper preset's model (Qwen2-VL-7B-Instruct or a LLaVA-NeXT checkpoint) in a LOCAL
  folder given as ``model_path``; nothing here downloads weights, configs or tokenizers (every load is
  ``local_files_only``). A folder whose checkpoint lacks weights is refused rather than run with random ones.
* :func:`build_tiny_qwen2_vl` writes a tiny RANDOM-weight checkpoint for tests only: it exercises the real
  loading and generation path, and its "captions" are gibberish.
* cookgen never invents a caption: when no captioner runs, captions come from the source annotations or stay
  empty.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from auteur.errors import AuteurError

if TYPE_CHECKING:
    from transformers import BatchFeature

log = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "Describe what the camera sees in this cooking video clip in one paragraph of 40 to 70 words: "
    "the shot type, the cook, the ingredients, the tools and the action."
)

# backend -> (transformers model class, the config.json model_type its checkpoints carry)
_BACKENDS: dict[str, tuple[str, str]] = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "qwen2_vl"),
    "llava_next": ("LlavaNextForConditionalGeneration", "llava_next"),
}


class CaptionError(AuteurError):
    """A captioner that cannot be loaded or run: missing or unloadable checkpoint, bad settings, no frames."""


@dataclass
class CaptionConfig:
    """Which VLM captions the clips, and how."""

    backend: Literal["none", "qwen2_vl", "llava_next"] = "none"
    """``none``: no captioner (captions come from the source or stay empty)."""
    model_path: str | None = None
    """Local folder holding a transformers checkpoint and its processor (paper preset: Qwen2-VL-7B-Instruct)."""
    prompt: str = DEFAULT_PROMPT
    num_frames: int = 4
    """Frames per clip given to the model as images; more frames than this are subsampled evenly."""
    max_new_tokens: int = 96
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def _one_line(err: BaseException, limit: int = 300) -> str:
    """``TypeName: first non-empty line of the message``, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sample_evenly(frames: list[Any], k: int) -> list[Any]:
    """``k`` items spread evenly over ``frames`` (first and last included); all of them when there are ``<= k``."""
    n = len(frames)
    if n <= k:
        return list(frames)
    if k == 1:
        return [frames[n // 2]]
    return [frames[round(i * (n - 1) / (k - 1))] for i in range(k)]


class Captioner:
    """A loaded VLM that turns the frames of one clip into a caption. Made by :func:`load_captioner`."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        backend: str,
        model_id: str,
        prompt: str,
        num_frames: int,
        max_new_tokens: int,
    ) -> None:
        self.model = model
        self.processor = processor
        self.backend = backend
        self.model_id = model_id
        """Recorded in provenance: ``<backend>:<checkpoint folder name>``."""
        self.prompt = prompt
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.generation_config = self._greedy_config(max_new_tokens)

    def _greedy_config(self, max_new_tokens: int) -> Any:
        """The checkpoint's generation config made greedy (its sampling settings cleared, so no warnings)."""
        gen = copy.deepcopy(self.model.generation_config)
        gen.do_sample = False
        gen.num_beams = 1
        gen.temperature = None
        gen.top_p = None
        gen.top_k = None
        gen.max_new_tokens = max_new_tokens
        gen.max_length = None
        if gen.pad_token_id is None:
            tok = self.processor.tokenizer
            gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return gen

    def messages(self, n_images: int) -> list[dict[str, Any]]:
        """The chat: one user turn with ``n_images`` image entries, then the prompt."""
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": self.prompt})
        return [{"role": "user", "content": content}]

    def prepare(self, frames: list[Image.Image]) -> BatchFeature:
        """The model inputs for one clip (token ids with image placeholders, pixel values), on the model's device.

        Frames beyond ``num_frames`` are subsampled evenly; every frame is converted to RGB.
        """
        if not frames:
            raise CaptionError("cannot caption a clip with no frames")
        images = [f.convert("RGB") for f in sample_evenly(list(frames), self.num_frames)]
        text = self.processor.apply_chat_template(
            self.messages(len(images)), add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(text=[text], images=images, return_tensors="pt")
        return inputs.to(self.model.device, dtype=self.model.dtype)

    def caption(self, frames: list[Image.Image]) -> str:
        """The caption of one clip from its frames: the model's answer with whitespace collapsed (may be empty)."""
        import torch

        inputs = self.prepare(frames)
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation_config)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        text = self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
        return " ".join(text.split())

    def caption_batch(self, clips: list[list[Image.Image]]) -> list[str]:
        """One caption per clip, in order.

        Clips go through the model one at a time: padding several prompts (each with its own images) into one
        batch changes the numerics, so a batch could caption a clip differently from :meth:`caption`.
        """
        captions = []
        for i, frames in enumerate(clips):
            t0 = time.perf_counter()
            captions.append(self.caption(frames))
            log.debug("captioned clip %d/%d in %.1fs", i + 1, len(clips), time.perf_counter() - t0)
        return captions


def load_captioner(cfg: CaptionConfig) -> Captioner | None:
    """Load the configured VLM from its local folder; ``None`` when ``cfg.backend == "none"``.

    Raises :class:`CaptionError` (one line) for a missing ``model_path``, a path that is not a folder, a folder
    holding another model type, a checkpoint that transformers cannot load or that lacks weights, or bad
    settings.
    """
    if cfg.backend == "none":
        return None
    if cfg.backend not in _BACKENDS:
        raise CaptionError(f"unknown caption backend {cfg.backend!r} (expected none, {', '.join(_BACKENDS)})")
    if not cfg.model_path:
        raise CaptionError(f"caption backend {cfg.backend} needs model_path: a local folder with the checkpoint")
    folder = Path(cfg.model_path).expanduser()
    if not folder.is_dir():
        raise CaptionError(f"caption model_path {folder} is not a folder")
    if cfg.num_frames < 1:
        raise CaptionError(f"caption num_frames must be at least 1, got {cfg.num_frames}")
    if cfg.max_new_tokens < 1:
        raise CaptionError(f"caption max_new_tokens must be at least 1, got {cfg.max_new_tokens}")

    import torch
    import transformers

    class_name, model_type = _BACKENDS[cfg.backend]
    where = f"the {cfg.backend} captioner from {folder}"
    t0 = time.perf_counter()
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        if config.model_type != model_type:
            raise CaptionError(f"cannot load {where}: it holds a {config.model_type!r} checkpoint, not {model_type!r}")
        model, info = getattr(transformers, class_name).from_pretrained(
            folder,
            config=config,
            dtype=getattr(torch, cfg.dtype),
            local_files_only=True,
            output_loading_info=True,
        )
        missing = sorted(info.get("missing_keys") or []) + sorted(k[0] for k in info.get("mismatched_keys") or [])
        if missing:
            raise CaptionError(
                f"cannot load {where}: the checkpoint lacks {len(missing)} weights (e.g. {missing[0]}); "
                "refusing to caption with random weights"
            )
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
        if getattr(processor, "chat_template", None) is None:
            raise CaptionError(f"cannot load {where}: its processor has no chat template")
        model = model.to(cfg.device).eval()
    except CaptionError:
        raise
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError, JSON errors...)
        raise CaptionError(f"cannot load {where}: {_one_line(e)}") from e

    model_id = f"{cfg.backend}:{folder.resolve().name}"
    log.info("loaded captioner %s (%s, %s) in %.1fs", model_id, cfg.device, cfg.dtype, time.perf_counter() - t0)
    return Captioner(
        model,
        processor,
        backend=cfg.backend,
        model_id=model_id,
        prompt=cfg.prompt,
        num_frames=cfg.num_frames,
        max_new_tokens=cfg.max_new_tokens,
    )


# --- a tiny random checkpoint, for tests ----------------------------------------------------------------------

_QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat format (system turn, image entries as <|vision_start|><|image_pad|><|vision_end|>), shortened.
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_tokenizer(special_tokens: list[str], **named_tokens: str) -> Any:
    """A byte-level tokenizer with no merges (one token per byte) plus ``special_tokens`` (ids 0..), built locally.

    ``named_tokens`` names some of them (``eos_token="<|im_end|>"``...). Any text round-trips; for test models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(special_tokens)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(special_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left", **named_tokens)


def build_tiny_qwen2_vl(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny Qwen2-VL checkpoint with RANDOM weights, and its processor, into ``folder``; return it.

    FOR TESTS ONLY: the weights are random, so its captions are gibberish. It lets tests run the real
    ``from_pretrained`` loading path, the chat template, the image processor and ``generate`` offline in a
    second. The tokenizer is byte-level with no merges (256 byte tokens plus Qwen2-VL's special tokens), built
    locally; images are resized to at most 56*56 pixels in area (at most 4 image tokens each).
    """
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer = _byte_tokenizer(_QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in _QWEN_SPECIAL_TOKENS}

    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=_QWEN_CHAT_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            # head_dim 8: the multimodal rope splits its 4 frequencies over (time, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,  # the merger projects into the text model's hidden size
            "mlp_ratio": 2,
            "num_heads": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    log.info("wrote a tiny RANDOM-weight Qwen2-VL test checkpoint to %s", folder)
    return folder
