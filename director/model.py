"""The director: an interleaved auto-regressive planner (VideoAuteur §4.1), in one file.

At step t the director emits an action a_t, then a caption c_t, then a visual state z_t, each conditioned on
all earlier (a, c, z). It is a Hugging Face causal LM (any ``AutoModelForCausalLM``, or a vision-language model
such as Qwen2-VL or LLaVA used text-only: it is fed ``inputs_embeds``, never pixels) with

- **LoRA** adapters (``peft``) on the attention projections (of a VLM's language model only, not its vision tower);
- **learnable query tokens** (as in SEED-X): an image block ``<|img|> <|q0|> … <|q{N-1}|> <|/img|>`` whose
  tokens are added to the tokenizer but whose input embeddings are this module's own parameters
  (``image_embeds``); at planning time the block is fed directly after each caption (forced, never sampled);
- a **regression head** mapping the N query hidden states to z_t in the configured visual space
  (``mlp``: a per-query MLP averaged over queries; ``resampler``: one learned latent attending over them);
- a **visual input projector** mapping an embedding back into the LM's input space: the ``<|vis|>`` slots
  after each image block carry proj(z_t), so later steps condition on earlier visual states (and an optional
  initial image, the paper's "initial image-text pair", enters the same way after the prompt).

The text of a plan, one step (``order`` picks the paper's Table 6 variants)::

    Recipe: how to cook a tuna sandwich
    Step 1. Drain the tuna and put it in a bowl.
    Caption: A close-up shot of ...
    <|img|><|q0|>…<|q3|><|/img|><|vis|>
    Step 2. …
    Done.

Loss: ``text_weight · CE(action and caption tokens) + α·(1 − cos(z_pred, z)) + β·MSE(z_pred, z)``.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

IMG_BEGIN = "<|img|>"
IMG_END = "<|/img|>"
VIS = "<|vis|>"


def query_token(i: int) -> str:
    return f"<|q{i}|>"


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` in recent transformers 5.x, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@functools.cache
def _cache_name(forward_class: type) -> str:
    return "cache" if "cache" in inspect.signature(forward_class.forward).parameters else "past_key_values"


def _cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The KV cache as ``model.forward`` names it: ``cache`` in recent transformers 5.x (which deprecate the old
    name), ``past_key_values`` before."""
    return {} if cache is None else {_cache_name(type(model)): cache}


@dataclass
class LoraSettings:
    """LoRA on the LM (peft). ``target_modules`` are module names of the backbone (Llama-style by default)."""

    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    """The director's own parts on top of the LM."""

    num_queries: int = 4
    head: Literal["mlp", "resampler"] = "mlp"
    head_hidden: int = 512
    vis_tokens: int = 1  # input tokens one embedding becomes through the projector
    order: Literal["action_caption", "action", "caption"] = "action_caption"  # text before each visual state
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class LossConfig:
    """``text_weight · CE + cos_weight · (1 − cos) + mse_weight · MSE`` (α = cos_weight, β = mse_weight)."""

    cos_weight: float = 1.0
    mse_weight: float = 1.0
    text_weight: float = 1.0


class RegressionHead(nn.Module):
    """[S, N, H] query hidden states -> [S, D] visual states."""

    def __init__(self, kind: str, hidden: int, inner: int, out_dim: int, num_queries: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            self.net = nn.Sequential(
                nn.LayerNorm(hidden), nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, out_dim)
            )
        elif kind == "resampler":
            heads = max(1, min(8, hidden // 64))
            while hidden % heads:
                heads -= 1
            self.latent = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            self.norm = nn.LayerNorm(hidden)
            self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
            self.out = nn.Sequential(
                nn.LayerNorm(hidden), nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, out_dim)
            )
        else:
            raise ValueError(f"unknown head {kind!r}")

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if self.kind == "mlp":
            return self.net(q).mean(dim=1)
        kv = self.norm(q)
        pooled, _ = self.attn(self.latent.expand(q.shape[0], -1, -1), kv, kv, need_weights=False)
        return self.out(pooled[:, 0])


class VisualProjector(nn.Module):
    """[S, D] embeddings -> [S, K, H] LM input tokens."""

    def __init__(self, in_dim: int, hidden: int, tokens: int) -> None:
        super().__init__()
        self.tokens, self.hidden = tokens, hidden
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden * tokens))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], self.tokens, self.hidden)


def foldable(settings: dict[str, Any]) -> str:
    """Why a saved adapter's ``adapter_config.json`` (``settings``) cannot be folded by :meth:`Director.fold_lora`
    ("" when it can): plain LoRA on linear layers only (no DoRA, per-module rank or alpha, LoRA bias, biases,
    modules to save, fan-in-fan-out layout)."""
    if settings.get("peft_type", "LORA") != "LORA":
        return f"peft type {settings.get('peft_type')}"
    for key in ("use_dora", "fan_in_fan_out", "lora_bias", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if settings.get(key):
            return f"{key} is set"
    if settings.get("bias", "none") != "none":
        return f"bias={settings.get('bias')}"
    if not isinstance(settings.get("r"), int) or not isinstance(settings.get("lora_alpha"), (int, float)):
        return "r or lora_alpha missing"
    return ""


def lora_targets(lm: nn.Module, names: list[str]) -> list[str] | str:
    """peft ``target_modules`` for LoRA on the modules of ``lm`` named ``names``: ``names`` itself when every such
    module belongs to the language model (its decoder, or the output projection), else a regex matching only
    those (a VLM's vision tower has ``q_proj``/``v_proj`` in LLaVA's CLIP, ``gate_proj``... in Qwen2.5-VL)."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm
    prefix = next((n for n, m in lm.named_modules() if m is decoder), "")
    output = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    matches = [(n, m) for n, m in lm.named_modules() if n.rsplit(".", 1)[-1] in names]
    kept = [n for n, m in matches if n.startswith(prefix + ".") or m is output]
    if not prefix or len(kept) == len(matches):
        return list(names)
    alternatives = "|".join(map(re.escape, names))
    pattern = rf"{re.escape(prefix)}\..*\.(?:{alternatives})"
    pattern += "".join(f"|{re.escape(n)}" for n, m in matches if m is output)
    return pattern


def add_director_tokens(tokenizer, num_queries: int) -> None:
    """Add the image-block tokens to ``tokenizer`` (idempotent)."""
    wanted = [IMG_BEGIN, IMG_END, VIS] + [query_token(i) for i in range(num_queries)]
    missing = [t for t in wanted if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)


class Director(nn.Module):
    """LM + LoRA + query tokens + regression head + visual projector (see the module docstring).

    ``lm`` is a causal LM (or a VLM's image-text-to-text model, used text-only), ``tokenizer`` its tokenizer (the
    image-block tokens are added to it), ``vis_dim`` the dimension of the visual space the head regresses onto.
    The director's own parts live on the LM's device (:attr:`device`); their initial values are drawn from the
    CPU's random stream, as before devices were configurable (peft draws the LoRA init on the LM's device).
    """

    def __init__(self, lm: nn.Module, tokenizer, cfg: ModelConfig, vis_dim: int) -> None:
        super().__init__()
        self.cfg, self.vis_dim, self.tokenizer = cfg, vis_dim, tokenizer
        add_director_tokens(tokenizer, cfg.num_queries)
        old_rows = lm.get_input_embeddings().weight.shape[0]
        if old_rows < len(tokenizer):
            # the new rows are never looked up (image_embeds replace them) nor sampled (banned when planning);
            # set them to the mean row so they are the same in every process and need not be saved
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            with torch.no_grad():
                for layer in (lm.get_input_embeddings(), lm.get_output_embeddings()):
                    if layer is not None and layer.weight.shape[0] >= len(tokenizer):
                        layer.weight[old_rows:] = layer.weight[:old_rows].mean(0)
        for p in lm.parameters():
            p.requires_grad_(False)
        if cfg.lora.enabled:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=lora_targets(lm, list(cfg.lora.target_modules)),
                bias="none",
                task_type="CAUSAL_LM",
            )
            with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates: not our warning
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                lm = get_peft_model(lm, lora)
        self.lm = lm
        # the LM's unsplittable blocks (its decoder layer class): FSDP's TRANSFORMER_BASED_WRAP wraps each of them
        self._no_split_modules = list(getattr(lm.get_base_model() if cfg.lora.enabled else lm, "_no_split_modules",
                                              None) or [])  # fmt: skip
        self.lora_merged = False
        # token ids of the training labels (a checkpoint's output_vocab.json; None: unknown)
        self.output_vocab: list[int] | None = None
        # a retrieval-augmented checkpoint's recipes (neighbours.json; director.neighbours.NeighbourRecipes): the
        # nearest other dish's recipe line follows the query in the prompt; None: the plain prompt
        self.neighbours = None
        hidden = self.embedding_layer().weight.shape[1]
        self.hidden = hidden
        ids = tokenizer.convert_tokens_to_ids
        self.img_begin_id, self.img_end_id, self.vis_id = ids(IMG_BEGIN), ids(IMG_END), ids(VIS)
        self.query_ids = [ids(query_token(i)) for i in range(cfg.num_queries)]
        block = [self.img_begin_id, self.img_end_id, *self.query_ids]
        # trainable input embeddings of the image-block tokens, initialised at the mean word embedding
        base = self.embedding_layer().weight.detach()
        device = base.device
        # fp32 whatever the LM's dtype (a trainable parameter); cast to the LM's dtype where it is looked up
        init = base[: min(len(base), 32000)].float().mean(0, keepdim=True).repeat(len(block), 1)
        noise = 0.02 * torch.randn(init.shape, dtype=init.dtype)  # drawn on the CPU: the same on every device
        self.image_embeds = nn.Parameter(init + noise.to(device))
        self.register_buffer("_block_index", self.block_lookup(device), persistent=False)
        self.head = RegressionHead(cfg.head, hidden, cfg.head_hidden, vis_dim, cfg.num_queries).to(device)
        self.projector = VisualProjector(vis_dim, hidden, cfg.vis_tokens).to(device)

    # -- pieces ------------------------------------------------------------------------------------------

    def block_lookup(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[vocabulary] token id -> its row of ``image_embeds`` (-1: not an image-block token), on ``device``.

        Built on the CPU whatever the default device; the meta-device shape check (director.meta_check), whose
        token ids stay real CPU tensors, puts this lookup on the CPU beside them."""
        block = [self.img_begin_id, self.img_end_id, *self.query_ids]  # the rows of image_embeds, in order
        lookup = torch.full((len(self.tokenizer),), -1, dtype=torch.long, device="cpu")
        lookup[torch.tensor(block, device="cpu")] = torch.arange(len(block), device="cpu")
        return lookup.to(device)

    def embedding_layer(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        """Where the LM's input embeddings live: every tensor the director or the planner builds goes here."""
        return self.embedding_layer().weight.device

    @property
    def projector_dtype(self) -> torch.dtype:
        """The dtype the visual projector computes in (its first layer's weight)."""
        return self.projector.net[1].weight.dtype

    def image_block_ids(self) -> list[int]:
        """``<|img|> q0 … q{N-1} <|/img|>`` followed by the ``vis_tokens`` slots of ``<|vis|>``."""
        return [self.img_begin_id, *self.query_ids, self.img_end_id] + [self.vis_id] * self.cfg.vis_tokens

    def embed(self, ids: torch.Tensor, vis: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [B, L, H] for token ids [B, L]; ``vis`` [M, D] fills the ``<|vis|>`` slots in
        row-major order (``vis_tokens`` slots per embedding)."""
        emb = self.embedding_layer()(ids)
        if self.training and torch.is_grad_enabled() and not emb.requires_grad:
            # the frozen embedding's output takes part in backward on every batch, with or without image blocks:
            # FSDP reduces a layer's gradients once its inputs' gradient is computed, so every process must reach
            # the first layer's inputs at the same point of the backward pass (else the reductions cross)
            emb = emb.requires_grad_()
        idx = self._block_index[ids]
        mask = idx >= 0
        if mask.any():  # masks go where the embeddings are (the meta shape check reads them from CPU ids)
            emb = emb.masked_scatter(mask.unsqueeze(-1).to(emb.device), self.image_embeds[idx[mask]].to(emb.dtype))
        vis_mask = ids == self.vis_id
        n_slots = int(vis_mask.sum())
        if n_slots:
            if vis is None or vis.shape[0] * self.cfg.vis_tokens != n_slots:
                got = 0 if vis is None else vis.shape[0]
                raise ValueError(
                    f"{n_slots} <|vis|> slots need {n_slots // self.cfg.vis_tokens} embeddings, got {got}"
                )
            self.check_visual_dim(vis, "the embeddings for the <|vis|> slots")
            # the projector keeps its own dtype (fp32 beside a bf16 LM); its tokens join the LM's inputs in the LM's
            tokens = self.projector(vis.to(self.projector_dtype)).reshape(-1, self.hidden)
            emb = emb.masked_scatter(vis_mask.unsqueeze(-1).to(emb.device), tokens.to(emb.dtype))
        return emb

    def check_visual_dim(self, z: torch.Tensor, what: str) -> None:
        """ValueError unless ``z`` is [S, vis_dim]: embeddings of another visual space would otherwise meet the
        projector's LayerNorm (or, as targets, broadcast against the predictions)."""
        if z.ndim != 2 or z.shape[1] != self.vis_dim:
            raise ValueError(
                f"{what} have shape {list(z.shape)}, but this director's visual space is {self.vis_dim}-d "
                f"(expected [S, {self.vis_dim}])"
            )

    def run(
        self,
        ids: torch.Tensor,
        vis: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        hidden: bool = False,
    ):
        """One LM pass over ``ids`` [B, L] (continuing ``past_key_values`` if given); returns the HF output."""
        return self.lm(
            inputs_embeds=self.embed(ids, vis),
            attention_mask=attention_mask,
            use_cache=past_key_values is not None,
            output_hidden_states=hidden,
            return_dict=True,
            **_cache_kwargs(self.base_lm(), past_key_values),
        )

    def base_lm(self) -> nn.Module:
        """The causal LM (or VLM) under the peft wrapper (the wrapper's LoRA layers live inside it)."""
        return self.lm.get_base_model() if self.cfg.lora.enabled else self.lm

    def run_decoder(
        self,
        ids: torch.Tensor,
        vis: torch.Tensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
    ):
        """The LM's pass without its output projection: returns (final hidden states [B, L, H] after the last
        norm, last-layer states as ``run(hidden=True).hidden_states[-1]`` gives them, the cache). Planning uses
        it to project onto a subset of the vocabulary (``plan.output_vocab``). ``get_decoder`` finds a VLM's nested
        language model (``model.language_model``)."""
        decoder = self.base_lm().get_decoder()
        out = decoder(
            inputs_embeds=self.embed(ids, vis),
            attention_mask=attention_mask,
            use_cache=past_key_values is not None,
            output_hidden_states=True,
            return_dict=True,
            **_cache_kwargs(decoder, past_key_values),
        )
        return out.last_hidden_state, out.hidden_states[-1], output_cache(out)

    @property
    def head_dtype(self) -> torch.dtype:
        """The dtype the regression head computes in (fp32 unless cast)."""
        return next(self.head.parameters()).dtype

    def predict_visual(self, last_hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """z predictions [S, D] from the last-layer hidden states [B, L, H] at the query positions of ``ids``."""
        q_mask = torch.isin(ids, torch.tensor(self.query_ids, device=ids.device))
        q = last_hidden[q_mask].view(-1, self.cfg.num_queries, self.hidden)
        return self.head(q.to(self.head_dtype)).float()

    # -- training ------------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor], cfg: LossConfig) -> dict[str, torch.Tensor]:
        """:meth:`loss`: training calls the (DDP/FSDP-wrapped) module, so its forward hooks run."""
        return self.loss(batch, cfg)

    def loss(self, batch: dict[str, torch.Tensor], cfg: LossConfig) -> dict[str, torch.Tensor]:
        """Loss on a collated batch (``input_ids``, ``attention_mask``, ``labels``, ``targets`` [S, D]).

        Teacher forcing: the ground-truth z of each step fills its ``<|vis|>`` slots, and the query states of
        its image block are regressed onto it (only where ``supervised``: a text-only step's block, filled
        with the mean embedding, has no target). Returns the total and its parts (plus L2 and cosine metrics).
        """
        if self.lora_merged:
            raise RuntimeError("this director's LoRA is merged into the base weights (inference only)")
        ids, targets = batch["input_ids"], batch["targets"]
        if targets.numel():
            self.check_visual_dim(targets, "the visual targets")
        # the decoder without its output projection; the projection then runs only at the labelled positions (the
        # same mean cross-entropy; 15 % less memory and 20 % less time per step than full-vocabulary fp32 logits at
        # every position: benchmarks/train_memory_bench.py)
        final, last_layer, _ = self.run_decoder(
            ids, targets if targets.numel() else None, None, batch["attention_mask"]
        )
        labels = batch["labels"][:, 1:]
        # where the labels are, found on the labels' device (the meta shape check keeps them on the CPU)
        rows, cols = (labels != -100).nonzero(as_tuple=True)
        n_text = rows.numel()
        hidden = final[rows.to(final.device), cols.to(final.device)]
        logits = self.base_lm().get_output_embeddings()(hidden).float()
        if n_text:
            text = F.cross_entropy(logits, labels[rows, cols].to(logits.device))
        else:  # no text target: zero, still through the output projection (DDP sees every parameter used)
            text = logits.sum() * 0.0
        parts = {"text_loss": text}
        total = cfg.text_weight * text
        sup = batch["supervised"]
        if sup.any():  # filled blocks of text-only steps carry no visual loss
            pred = self.predict_visual(last_layer, ids)[sup]
            tgt = targets[sup].float()
            cos = F.cosine_similarity(pred, tgt, dim=-1)
            mse = F.mse_loss(pred, tgt)
            total = total + cfg.cos_weight * (1 - cos).mean() + cfg.mse_weight * mse
            parts.update(cos=cos.mean().detach(), mse=mse.detach(), l2=(pred - tgt).norm(dim=-1).mean().detach())
        # every parameter of the director's own parts takes part in every loss, with weight zero where a batch has no
        # use for it (no visual target: the head; no <|vis|> slot: the projector), so DDP's reducer sees a gradient
        # for each on every process (mixed CookGen batches: text-only, caption-only, visual)
        touch = sum(p.sum() for m in (self.head, self.projector) for p in m.parameters()) + self.image_embeds.sum()
        parts["loss"] = total + 0.0 * touch
        return parts

    # -- what a checkpoint holds ---------------------------------------------------------------------------

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The director's own trainable tensors (query/image embeddings, head, projector)."""
        out = {"image_embeds": self.image_embeds.detach()}
        out.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        out.update({f"projector.{k}": v for k, v in self.projector.state_dict().items()})
        return out

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.image_embeds.copy_(tensors["image_embeds"])
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.projector.load_state_dict({k[10:]: v for k, v in tensors.items() if k.startswith("projector.")})

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The LoRA weights (peft's state-dict layout), empty without LoRA."""
        if not self.cfg.lora.enabled:
            return {}
        from peft import get_peft_model_state_dict

        return {k: v.detach() for k, v in get_peft_model_state_dict(self.lm).items()}

    def load_adapter_state(self, tensors: dict[str, torch.Tensor], allow_missing: bool = False) -> None:
        """Load LoRA weights; every tensor must have a place, and (unless ``allow_missing``) every LoRA weight
        of this model must be given."""
        if not self.cfg.lora.enabled:
            return
        from auteur.training import load_lora_state

        load_lora_state(self.lm, tensors, "adapter", ValueError, allow_missing=allow_missing)

    def fold_lora(self, tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
        """Fold a saved LoRA adapter (peft's layout, ``settings`` its ``adapter_config.json``) straight into the
        base weights of a director built without LoRA: ``W += (alpha / r) * B @ A`` per adapted linear layer, the
        sum peft's ``merge_adapter`` computes, without wrapping the LM in peft first (``director plan`` starts
        ~1 s sooner; benchmarks/plan_bench.py). Inference only, like :meth:`merge_lora`. Raises ``ValueError``
        when a tensor has no place or the adapter is of a kind this sum does not cover (see :func:`foldable`)."""
        if self.cfg.lora.enabled:
            raise ValueError("fold_lora needs a director built without LoRA (its adapter goes into the base weights)")
        why = foldable(settings)
        if why:
            raise ValueError(f"this adapter cannot be folded: {why}")
        r, alpha = int(settings["r"]), float(settings["lora_alpha"])
        scale = alpha / (math.sqrt(r) if settings.get("use_rslora") else r)
        modules = dict(self.lm.named_modules())
        tied = {id(self.lm.get_input_embeddings().weight)}
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
            if m is None:
                raise ValueError(f"unexpected adapter tensor {key}")
            pairs.setdefault(m.group(1), {})[m.group(2)] = value
        with torch.no_grad():
            for name, ab in sorted(pairs.items()):
                layer = modules.get(name)
                if not isinstance(layer, nn.Linear) or set(ab) != {"A", "B"}:
                    raise ValueError(f"adapter tensors for {name} do not fit a linear layer of this model")
                if id(layer.weight) in tied:
                    raise ValueError(f"{name} shares its weight with the input embeddings")
                a, b, w = ab["A"], ab["B"], layer.weight
                if a.shape != (r, w.shape[1]) or b.shape != (w.shape[0], r):
                    raise ValueError(f"adapter tensors for {name} have shapes {tuple(a.shape)}, {tuple(b.shape)}")
                # out of place: the base weights are memory-mapped from the model file, and writing into them
                # copies every page on first touch (1.1 s for SmolLM2-135M, against 0.3 s for new tensors)
                merged = torch.addmm(
                    w.float(), b.to(w.device, torch.float32), a.to(w.device, torch.float32), alpha=scale
                )
                layer.weight = nn.Parameter(merged.to(w.dtype), requires_grad=False)
        self.lora_merged = True

    def merge_lora(self) -> None:
        """Fold the LoRA weights into the base weights (peft ``merge_adapter``), for faster inference: the LM
        computes the same function up to float rounding with one matrix per adapted layer. Idempotent. Inference
        only: training a merged director would apply the adapter twice."""
        if self.cfg.lora.enabled and not self.lora_merged:
            self.lm.merge_adapter()
            self.lora_merged = True

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
