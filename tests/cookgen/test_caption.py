"""Tests of cookgen.caption on tiny RANDOM-weight checkpoints written locally (no hub, no real weights).

The captions of a random model are gibberish; these tests check the mechanics: loading from a local folder,
the chat prompt, that the frames really reach the model as images, greedy determinism, and clear errors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cookgen.caption import (
    CaptionConfig,
    Captioner,
    CaptionError,
    _byte_tokenizer,
    build_tiny_qwen2_vl,
    load_captioner,
    sample_evenly,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _frames(n: int, seed: int, size: tuple[int, int] = (120, 90)) -> list[Image.Image]:
    """``n`` distinct random RGB frames of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@torch.inference_mode()
def _last_logits(cap: Captioner, frames: list[Image.Image]) -> torch.Tensor:
    return cap.model(**cap.prepare(frames)).logits[0, -1]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("caption") / "tiny-qwen2-vl")


@pytest.fixture(scope="module")
def qwen(qwen_dir) -> Captioner:
    cap = load_captioner(CaptionConfig(backend="qwen2_vl", model_path=str(qwen_dir), max_new_tokens=12))
    assert cap is not None
    return cap


def test_tiny_qwen_folder_is_a_checkpoint(qwen_dir):
    names = {p.name for p in qwen_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names


def test_caption_is_deterministic_text(qwen, qwen_dir):
    frames = _frames(3, seed=0)
    first = qwen.caption(frames)
    assert isinstance(first, str)
    assert first  # the seeded tiny model answers something (gibberish) before its end token
    assert first == " ".join(first.split())  # one stripped paragraph
    assert "Describe" not in first and "assistant" not in first  # only the new tokens are decoded
    assert qwen.caption(frames) == first
    assert qwen.model_id == f"qwen2_vl:{qwen_dir.name}"
    assert qwen.model.dtype == torch.float32
    assert not qwen.model.training


def test_caption_batch_equals_per_clip_captions(qwen):
    clips = [_frames(2, seed=1), _frames(4, seed=2), _frames(1, seed=3, size=(64, 64))]
    assert qwen.caption_batch(clips) == [qwen.caption(c) for c in clips]
    assert qwen.caption_batch([]) == []


def test_frames_reach_the_model_as_images(qwen):
    frames = _frames(3, seed=4)
    inputs = qwen.prepare(frames)
    ids = inputs["input_ids"][0]
    tok = qwen.processor.tokenizer
    # one image entry per frame, each expanded to the image tokens the vision tower produces: a 120x90 frame is
    # resized to 56x28 pixels under the tiny processor's 56*56-pixel budget = 4x2 patches of 14 = 2 merged tokens
    assert inputs["image_grid_thw"].tolist() == [[1, 2, 4]] * 3
    assert int((ids == tok.convert_tokens_to_ids("<|vision_start|>")).sum()) == 3
    assert int((ids == qwen.model.config.image_token_id).sum()) == 3 * 2
    assert inputs["pixel_values"].shape[0] == 3 * 8
    # the prompt follows the images in the user turn, and the assistant turn is opened
    text = tok.decode(ids)
    assert text.index("<|image_pad|>") < text.index(qwen.prompt) < text.rindex("<|im_start|>assistant\n")
    # the pixels change what the model predicts: other frames (same sizes) give other logits, the same ones don't
    same = _last_logits(qwen, frames)
    assert torch.equal(same, _last_logits(qwen, frames))
    assert not torch.allclose(same, _last_logits(qwen, _frames(3, seed=5)))
    # and so does their number
    assert int((qwen.prepare(frames[:1])["input_ids"] == qwen.model.config.image_token_id).sum()) == 2


def test_num_frames_subsamples_evenly(qwen_dir):
    cap = load_captioner(CaptionConfig(backend="qwen2_vl", model_path=str(qwen_dir), num_frames=2, max_new_tokens=4))
    assert cap is not None and cap.num_frames == 2
    assert cap.prepare(_frames(6, seed=6))["image_grid_thw"].shape[0] == 2
    assert sample_evenly(list(range(6)), 4) == [0, 2, 3, 5]
    assert sample_evenly(list(range(6)), 2) == [0, 5]
    assert sample_evenly(list(range(5)), 1) == [2]
    assert sample_evenly(list(range(3)), 4) == [0, 1, 2]


def test_caption_real_frames(qwen):
    jpgs = sorted((SHARED / "images").glob("*/*.jpg"))
    if len(jpgs) < 2:
        pytest.skip(f"no shared images under {SHARED / 'images'} (../shared/data is not beside this checkout)")
    frames = [Image.open(p) for p in jpgs[:3]]
    text = qwen.caption(frames)
    assert isinstance(text, str) and text == qwen.caption(frames)
    assert qwen.prepare(frames)["image_grid_thw"].shape[0] == len(frames)


def test_no_frames_is_an_error(qwen):
    with pytest.raises(CaptionError, match="no frames"):
        qwen.caption([])


def test_backend_none_gives_no_captioner():
    assert load_captioner(CaptionConfig()) is None
    assert load_captioner(CaptionConfig(backend="none", model_path="/does/not/matter")) is None


def _one_line_error(cfg: CaptionConfig) -> str:
    with pytest.raises(CaptionError) as info:
        load_captioner(cfg)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_model_path(tmp_path):
    assert "needs model_path" in _one_line_error(CaptionConfig(backend="qwen2_vl"))
    assert "not a folder" in _one_line_error(CaptionConfig(backend="llava_next", model_path=str(tmp_path / "nope")))
    (tmp_path / "file.bin").write_bytes(b"x")
    assert "not a folder" in _one_line_error(CaptionConfig(backend="qwen2_vl", model_path=str(tmp_path / "file.bin")))


def test_garbage_folder(tmp_path):
    (tmp_path / "config.json").write_text("{this is not json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    message = _one_line_error(CaptionConfig(backend="qwen2_vl", model_path=str(tmp_path)))
    assert message.startswith("cannot load the qwen2_vl captioner from")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "cannot load" in _one_line_error(CaptionConfig(backend="qwen2_vl", model_path=str(empty)))


def test_wrong_model_type_and_missing_weights(qwen_dir, tmp_path):
    assert "'qwen2_vl' checkpoint, not 'llava_next'" in _one_line_error(
        CaptionConfig(backend="llava_next", model_path=str(qwen_dir))
    )
    no_weights = tmp_path / "no-weights"
    shutil.copytree(qwen_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert "cannot load" in _one_line_error(CaptionConfig(backend="qwen2_vl", model_path=str(no_weights)))
    # a checkpoint that lacks one tensor would be completed with random weights: refused, naming the tensor
    from safetensors.torch import load_file, save_file

    weights = load_file(qwen_dir / "model.safetensors")
    dropped = sorted(k for k in weights if "lm_head" in k)[0]
    del weights[dropped]
    save_file(weights, no_weights / "model.safetensors", metadata={"format": "pt"})
    message = _one_line_error(CaptionConfig(backend="qwen2_vl", model_path=str(no_weights)))
    assert "lacks 1 weights" in message and "random weights" in message


def test_bad_settings(qwen_dir):
    assert "num_frames" in _one_line_error(CaptionConfig(backend="qwen2_vl", model_path=str(qwen_dir), num_frames=0))
    assert "max_new_tokens" in _one_line_error(
        CaptionConfig(backend="qwen2_vl", model_path=str(qwen_dir), max_new_tokens=0)
    )


# --- LLaVA-NeXT through the same code path ------------------------------------------------------------------

_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    " [/INST]{% else %}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    """A tiny RANDOM-weight LLaVA-NeXT checkpoint (CLIP vision tower, Llama text model) with its processor."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    folder = tmp_path_factory.mktemp("caption") / "tiny-llava-next"
    tok = _byte_tokenizer(["<s>", "</s>", "<pad>", "<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token
        chat_template=_LLAVA_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            image_size=28,
            patch_size=14,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=2,
        ),
        image_token_index=3,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlavaNextForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_llava_next_captions(llava_dir):
    cap = load_captioner(CaptionConfig(backend="llava_next", model_path=str(llava_dir), max_new_tokens=8))
    assert cap is not None and cap.model_id == "llava_next:tiny-llava-next"
    frames = _frames(2, seed=7)
    text = cap.caption(frames)
    assert isinstance(text, str) and text == cap.caption(frames)
    assert cap.caption_batch([frames, frames[:1]]) == [text, cap.caption(frames[:1])]
    inputs = cap.prepare(frames)
    assert inputs["pixel_values"].shape[0] == 2 and inputs["image_sizes"].tolist() == [[90, 120]] * 2
    one = int((cap.prepare(frames[:1])["input_ids"] == 3).sum())
    assert one > 0 and int((inputs["input_ids"] == 3).sum()) == 2 * one
    assert not torch.allclose(_last_logits(cap, frames), _last_logits(cap, _frames(2, seed=8)))
