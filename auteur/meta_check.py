"""Shape checks of the paper presets at real size on the ``meta`` device: no weights, no memory, seconds.

The paper presets load models nobody can have here (FLUX.1 Fill [dev], Wan 2.1 I2V 14B, Wan 2.1 T2V 1.3B, a 7B
MLLM). Their architectures are public: ``model_configs/paper_shapes.json`` holds the published config values,
each with the source it was read from. Each stage builds the *real* classes (diffusers, transformers) from
those values on the meta device, where a tensor has a shape and a dtype but no storage, and runs its own code
through them (a forward, and where the stage trains a loss and its backward graph). What this catches is every
dimension our code adds: adapters, projectors, widened patch embeddings, heads, LoRA targets, extra tokens.

Every junction is checked by this code before the library sees it, so a changed dimension fails here with
:class:`ShapeMismatch` naming both sides, not deep inside a matmul (or, worse, in a silent broadcast). The
meta device also keeps CUDA's device rules: a CPU tensor mixed into a meta computation fails as it would on a
GPU.

    python -m auteur.meta_check [renderer] [videogen] [anchors] [director]   # all four when none is named

The stages: :mod:`renderer.meta_check`, :mod:`videogen.meta_check`, :mod:`anchors.meta_check`,
:mod:`director.meta_check`.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auteur.errors import AuteurError

PAPER_SHAPES = Path(__file__).parent / "model_configs" / "paper_shapes.json"
META = torch.device("meta")
STAGES = ("renderer", "videogen", "anchors", "director")


class ShapeMismatch(AuteurError):
    """A dimension our code adds does not fit the model it is added to (found by a meta-device shape check)."""


# --------------------------------------------------------------------------------------------- published configs


def published(name: str) -> dict[str, Any]:
    """A deep copy of one model's section of ``paper_shapes.json`` (callers may change it: tests alter one value)."""
    data = json.loads(PAPER_SHAPES.read_text())
    if name not in data:
        raise KeyError(
            f"{PAPER_SHAPES.name} has no model {name!r} (it has {', '.join(k for k in data if k[0] != '_')})"
        )
    return copy.deepcopy(data[name])


def constructor_kwargs(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a config entry without its notes (keys starting with ``_``)."""
    return {k: copy.deepcopy(v) for k, v in entry.items() if not k.startswith("_")}


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def transformers_config(entry: Mapping[str, Any]) -> Any:
    """The transformers config object of a ``transformers.*`` entry (its class's ``config_class`` of the values)."""
    return _class(entry["_class"]).config_class(**constructor_kwargs(entry))


def build_on_meta(entry: Mapping[str, Any], dtype: torch.dtype | None = None, **kwargs: Any) -> nn.Module:
    """The real class ``entry["_class"]`` built from the entry's values with every parameter and buffer on meta.

    diffusers models take their values through ``from_config``, transformers models through their config class
    and ``_from_config`` (with ``kwargs``). ``torch.device("meta")`` (rather than
    ``accelerate.init_empty_weights()``, which leaves buffers on the CPU) puts the buffers on meta too, so no CPU
    tensor meets a meta one in the forward. Run transformers models inside :func:`mask_values_unknown`.
    """
    cls = _class(entry["_class"])
    with torch.device(META):
        if entry["_class"].startswith("diffusers."):
            model = cls.from_config(constructor_kwargs(entry), **kwargs)
            if dtype is not None:  # as from_pretrained(dtype=...): all but the modules the class keeps in fp32
                nn.Module.to(model, dtype)  # (diffusers' own .to warns about those even when there are none)
                for name, module in model.named_modules():
                    if any(k in name.split(".") for k in getattr(model, "_keep_in_fp32_modules", None) or ()):
                        module.float()
        else:
            model = cls._from_config(transformers_config(entry), dtype=dtype, **kwargs)
    return model


@contextmanager
def mask_values_unknown() -> Iterator[None]:
    """Inside this block transformers treats a meta attention mask as a traced one.

    Before it builds an attention mask, transformers asks whether the padding mask is all ones (then the mask
    can be skipped: ``padding_mask.all()``), unless the tensor is being traced (``masking_utils.is_tracing``),
    whose values are unknown too. A meta tensor has no values, so here it counts as traced: the mask is built,
    with the same shapes, instead of the question failing with "Tensor.item() cannot be called on meta
    tensors". Only meta tensors are affected, and only inside the block.
    """
    from transformers import masking_utils

    original = masking_utils.is_tracing

    def is_tracing(tensor: Any = None) -> bool:
        return original(tensor) or (isinstance(tensor, torch.Tensor) and tensor.is_meta)

    masking_utils.is_tracing = is_tracing
    try:
        yield
    finally:
        masking_utils.is_tracing = original


# --------------------------------------------------------------------------------------------- checks


def expect(what: str, got: Any, want: Any, of: str) -> None:
    """Raise :class:`ShapeMismatch` ("``what`` is ``got``, but ``of`` is ``want``") unless ``got == want``."""
    if got != want:
        raise ShapeMismatch(f"{what} is {_fmt(got)}, but {of} is {_fmt(want)}")


def expect_shape(what: str, tensor: torch.Tensor, want: Sequence[int | None], of: str) -> None:
    """Raise :class:`ShapeMismatch` unless ``tensor`` has ``want``'s rank and sizes (``None``: any size)."""
    got = tuple(tensor.shape)
    if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
        shown = "[" + ", ".join("*" if w is None else str(w) for w in want) + "]"
        raise ShapeMismatch(f"{what} has shape {list(got)}, but {of} is {shown}")


def _fmt(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple | torch.Size) else str(value)


def linear_in(module: nn.Module) -> int:
    """The input width of a Linear (or a LoRA-wrapped one: peft keeps the original as ``base_layer``)."""
    base = getattr(module, "base_layer", module)
    return int(base.in_features)


def linear_out(module: nn.Module) -> int:
    base = getattr(module, "base_layer", module)
    return int(base.out_features)


def lora_layers(model: nn.Module) -> list[str]:
    """Names of the modules peft wrapped with LoRA (they carry ``lora_A``)."""
    return [name for name, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]


def check_lora_targets(
    model: nn.Module, targets: Sequence[str], what: str, within: str | None = None
) -> dict[str, int]:
    """LoRA layers per target name of ``model`` after peft added them; ShapeMismatch for a target that matched no
    module (peft only fails when *no* target matches, so one misspelt or absent name is otherwise silently
    dropped) and, with ``within``, for a LoRA layer outside that module prefix (e.g. a VLM's vision tower)."""
    names = lora_layers(model)
    counts = {t: sum(n == t or n.endswith("." + t) for n in names) for t in targets}
    missing = [t for t, c in counts.items() if c == 0]
    if missing:
        raise ShapeMismatch(f"LoRA target(s) {', '.join(missing)} match no module of {what}")
    if within is not None:
        outside = [n for n in names if not n.startswith(within + ".")]
        if outside:
            raise ShapeMismatch(
                f"LoRA was added outside {within} of {what}: {outside[0]} (and {len(outside) - 1} more)"
            )
    return counts


def call_arguments(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a ``module.forward`` call by parameter name (positional ones bound to their names)."""
    return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)


@contextmanager
def input_check(module: nn.Module, check: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Run ``check(arguments by name)`` before every forward of ``module`` inside the block, so our own error is
    raised before the library meets a tensor of the wrong shape."""

    def hook(mod: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        check(call_arguments(mod, args, kwargs))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def output_check(module: nn.Module, check: Callable[[Any], None]) -> Iterator[None]:
    """Run ``check(output)`` after every forward of ``module`` inside the block."""

    def hook(mod: nn.Module, args: tuple, output: Any) -> None:
        check(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def check_gradients(loss: torch.Tensor, params: Mapping[str, nn.Parameter], what: str) -> None:
    """Backward ``loss`` (on meta: the graph only) and require a gradient of each parameter's own shape."""
    expect_shape(f"the {what} loss", loss, (), "a scalar loss")
    loss.backward()
    for name, p in params.items():
        if p.grad is None:
            raise ShapeMismatch(f"{what}: no gradient reaches {name} (the training graph does not use it)")
        expect(f"{what}: the gradient of {name}", tuple(p.grad.shape), tuple(p.shape), "the parameter's shape")


class Report(dict):
    """What a stage check saw: tensor shapes (``[..]``), widths and counts by name, in the order it saw them."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def add(self, name: str, value: torch.Tensor | Sequence[int] | int | str) -> None:
        self[name] = tuple(value.shape) if isinstance(value, torch.Tensor) else value

    def __str__(self) -> str:
        width = max((len(k) for k in self), default=0)
        rows = [f"  {k:<{width}}  {_fmt(v)}" for k, v in self.items()]
        return "\n".join([f"{self.stage}:", *rows])


# --------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named stages' checks (all when none is named) and print what each saw; 1 on a mismatch."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m auteur.meta_check",
        description="Build the paper models from their published configs on the meta device (no memory, no weights) "
        "and run each stage's own code through them at full size; exit 1 on a shape mismatch.",
        epilog="example: python -m auteur.meta_check renderer director",
    )
    p.add_argument("stages", nargs="*", metavar="STAGE", help=f"any of {', '.join(STAGES)} (default: all)")
    args = p.parse_args(argv)
    names = args.stages or list(STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        check = importlib.import_module(f"{name}.meta_check").check_paper_shapes
        t0 = time.perf_counter()
        try:
            report = check()
        except ShapeMismatch as e:
            print(f"{name}: MISMATCH: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{report}\n  ({time.perf_counter() - t0:.1f} s on meta)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
