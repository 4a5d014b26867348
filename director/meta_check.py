"""The director's paper preset at real size on the meta device: a 7B MLLM (Qwen2-VL-7B-Instruct) + our parts.

Qwen2-VL-7B-Instruct (language model and vision tower) is built from its published config
(``auteur/model_configs/paper_shapes.json``, section ``qwen2_vl_7b_instruct``) on the meta device with the
class the backbone loader would pick for its folder (``AutoModelForImageTextToText``), in the preset's dtype;
:class:`director.model.Director` adds the preset's LoRA, query tokens, regression head and visual projector,
and one short batch built by the director's own data code (``SequenceBuilder``, ``collate``) goes through
``Director.loss`` and its backward graph. Checked, before the library meets them:

- the query tokens ``image_embeds`` [num_queries + 2, 3584] and the ``<|vis|>`` tokens of the projector
  [S, vis_tokens, 3584] at the LM's hidden size (Qwen2-VL-7B: 3584);
- the regression head: query states [S, 16, 3584] -> (resampler, ``head_hidden`` 2048) -> [S, 768], the
  CLIP ViT-L-14 space of the targets; the visual projector [S, 768] -> [S, 4, 3584];
- the LoRA targets: every one found, and only in the language model (not the vision tower).

Token ids, labels and which steps are supervised stay real CPU tensors (the director reads their values to
find the query, ``<|vis|>`` and labelled positions); everything computed from weights is meta. The tokenizer is
the tiny preset's (it only supplies ids: all are below Qwen2-VL's vocabulary of 152064).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from auteur.config import load_config
from auteur.meta_check import (
    META,
    Report,
    ShapeMismatch,
    check_gradients,
    check_lora_targets,
    expect,
    expect_shape,
    input_check,
    linear_in,
    linear_out,
    mask_values_unknown,
    output_check,
    published,
    transformers_config,
)
from director.backbone import _auto_class, _fix_special_tokens, _torch_dtype, build_tiny_tokenizer
from director.config import PRESETS, DirectorConfig
from director.data import Episode, SequenceBuilder, collate
from director.model import Director

MODEL = "qwen2_vl_7b_instruct"
SPACE = "clip_vit_l_14"


def paper_config(overrides: Sequence[str] = ()) -> DirectorConfig:
    """The ``paper`` preset (plus ``key=value`` overrides)."""
    return load_config(DirectorConfig, "paper", list(overrides), preset_dir=PRESETS)


def meta_backbone(cfg: DirectorConfig, config: dict[str, Any] | None = None):
    """The 7B MLLM from ``config`` (the published section by default) on meta, built by the Auto class that
    ``director.backbone`` picks for a folder of that config and left as ``load_backbone`` leaves a model (eval
    mode, cache on, special tokens fixed); and the tokenizer."""
    entry = (published(MODEL) if config is None else config)["model"]
    tokenizer = build_tiny_tokenizer()
    model_config = transformers_config(entry)
    auto = _auto_class(model_config, cfg.backbone.model_class)
    with torch.device(META):
        model = auto.from_config(model_config, dtype=_torch_dtype(cfg.backbone.dtype))
    expect("the class the backbone loader builds", type(model).__name__, entry["_class"].rsplit(".", 1)[1],
           "the published model's class")  # fmt: skip
    model.eval()
    model.config.use_cache = True
    model.config.get_text_config().use_cache = True
    _fix_special_tokens(model, tokenizer)
    return model, tokenizer


def build_paper_meta(config: dict[str, Any] | None = None, overrides: Sequence[str] = ()) -> Director:
    """The paper director on meta: the MLLM, LoRA, query tokens, head and projector (a CLIP ViT-L-14 space)."""
    cfg = paper_config(overrides)
    with torch.device(META):
        lm, tokenizer = meta_backbone(cfg, config)
        director = Director(lm, tokenizer, cfg.model, int(published(SPACE)["embed_dim"]))
    # the token-id lookup is data the director reads with the ids: on the CPU, where the batch's ids stay
    director._block_index = director.block_lookup("cpu")
    return director


def _decoder_prefix(director: Director) -> str:
    decoder = director.base_lm().get_decoder()
    return next(n for n, m in director.lm.named_modules() if m is decoder)


def check_structure(director: Director, report: Report) -> None:
    """Every dimension where the director's parts meet the LM, from the built modules (nothing runs yet)."""
    cfg = director.cfg
    text = director.base_lm().config.get_text_config()
    hidden = int(text.hidden_size)
    expect("the LM's input embedding width", director.hidden, hidden, "the LM's hidden_size")
    expect_shape("the query-token embeddings (image_embeds)", director.image_embeds, (cfg.num_queries + 2, hidden),
                 "[num_queries + 2, hidden_size]")  # fmt: skip
    head = director.head
    if head.kind == "resampler":
        expect("the regression head's query width (resampler attention)", head.attn.embed_dim, hidden,
               "the LM's hidden size")  # fmt: skip
        first, last = head.out[1], head.out[3]
    else:
        first, last = head.net[1], head.net[3]
    expect("the regression head's input width", linear_in(first), hidden, "the LM's hidden size")
    expect("the regression head's hidden width", linear_out(first), cfg.head_hidden, "model.head_hidden")
    expect("the regression head's output width", linear_out(last), director.vis_dim, "the visual space's dim")
    proj = director.projector.net[1]
    expect("the visual projector's input width", linear_in(proj), director.vis_dim, "the visual space's dim")
    expect("the visual projector's output width", linear_out(proj), cfg.vis_tokens * hidden,
           f"vis_tokens ({cfg.vis_tokens}) x the LM's hidden size ({hidden})")  # fmt: skip
    rows = director.embedding_layer().weight.shape[0]
    if rows < len(director.tokenizer):
        raise ShapeMismatch(
            f"the LM's {rows} embedding rows cannot hold the tokenizer's {len(director.tokenizer)} ids"
        )
    if cfg.lora.enabled:
        prefix = _decoder_prefix(director)
        counts = check_lora_targets(director.lm, list(cfg.lora.target_modules),
                                    f"the language model {prefix}", within=prefix)  # fmt: skip
        report.add("lora layers per target", str(counts))
        report.add("lora confined to", prefix)
    report.add("hidden size", hidden)
    report.add("image_embeds (query tokens)", director.image_embeds)


def short_batch(director: Director, steps: int = 3, max_tokens: int = 4096) -> dict[str, torch.Tensor]:
    """Two windows of ``steps`` steps in the director's plan format (``SequenceBuilder`` + ``collate``): a recipe
    with every step's embedding, and a text-only one whose image blocks are filled (no visual loss)."""
    builder = SequenceBuilder(director.tokenizer, director.image_block_ids(), director.cfg.order, max_tokens)
    z = torch.zeros(director.vis_dim)
    ep = Episode("how to make a tuna sandwich",
                 [(f"Do step {k + 1}.", f"A close-up of step {k + 1}.", z) for k in range(steps)])  # fmt: skip
    text_only = Episode("how to make pancakes", [(f"Do step {k + 1}.", "", None) for k in range(steps)])
    samples = [builder.episode_window(ep, 0, steps), builder.episode_window(text_only, 0, steps, fill=z)]
    return collate(samples, director.tokenizer.pad_token_id)


def check_loss(director: Director, report: Report, backward: bool = True, batch: dict | None = None) -> None:
    """One ``Director.loss`` on a short batch: ids, labels and ``supervised`` on the CPU, the rest on meta."""
    from director.model import LossConfig

    batch = short_batch(director) if batch is None else batch
    hidden, nq = director.hidden, director.cfg.num_queries
    ids = batch["input_ids"]
    b, length = ids.shape
    blocks = int(torch.isin(ids, torch.tensor(director.query_ids)).sum()) // nq
    targets = batch["targets"]
    expect("the visual targets' width", targets.shape[-1], director.vis_dim, "the director's visual space dim")
    expect("image blocks in the batch", blocks, targets.shape[0], "visual targets (one per block)")
    batch = {**batch, "attention_mask": batch["attention_mask"].to(META), "targets": targets.to(META)}
    report.add("batch input_ids", ids)
    lm = director.base_lm()

    def lm_inputs(a: dict[str, Any]) -> None:
        expect_shape("the LM's inputs_embeds", a["inputs_embeds"], (b, length, hidden), "[B, L, hidden_size]")
        report.add("LM inputs_embeds", a["inputs_embeds"])

    def head_output(out: torch.Tensor) -> None:
        expect_shape("the regression head's output", out, (blocks, director.vis_dim), "[image blocks, vis_dim]")
        report.add("regression head output", out)

    def projector_output(out: torch.Tensor) -> None:
        expect_shape("the visual projector's tokens", out, (blocks, director.cfg.vis_tokens, hidden),
                     "[image blocks, vis_tokens, hidden_size]")  # fmt: skip
        report.add("visual projector tokens", out)

    def head_input(a: dict[str, Any]) -> None:
        expect_shape("the query states", a["q"], (blocks, nq, hidden), "[image blocks, num_queries, hidden_size]")
        report.add("query states", a["q"])

    director.train()
    with (
        mask_values_unknown(),
        input_check(lm.get_decoder(), lm_inputs),  # the loss runs the decoder, then the LM head at the labels only
        input_check(director.head, head_input),
        output_check(director.head, head_output),
        output_check(director.projector, projector_output),
    ):
        parts = director.loss(batch, LossConfig())
    for name in ("loss", "text_loss", "cos", "mse"):
        if name in parts:
            expect_shape(f"the director's {name}", parts[name], (), "a scalar")
    report.add("loss", parts["loss"])
    if backward:
        named = {n: p for n, p in director.named_parameters() if p.requires_grad}
        check_gradients(parts["loss"], named, "director")
        report.add("trainable tensors with gradients", len(named))


def check_paper_shapes(
    config: dict[str, Any] | None = None, overrides: Sequence[str] = (), backward: bool = True
) -> Report:
    """Build the paper director on meta (``config``: the ``qwen2_vl_7b_instruct`` section, altered by tests) and
    check it; ShapeMismatch names the first dimension that does not fit."""
    report = Report("director (Qwen2-VL-7B-Instruct, paper preset)")
    director = build_paper_meta(config, overrides)
    check_structure(director, report)
    max_tokens = paper_config(overrides).dataset.max_tokens
    check_loss(director, report, backward, short_batch(director, max_tokens=max_tokens))
    return report
