"""``director plan``: a narrative plan for a query, one step at a time, with the KV cache kept throughout.

For each step the planner (1) decides whether the recipe goes on (``Step`` against ``Done`` at the step
boundary) unless the number of steps is fixed, (2) feeds ``Step t.`` and samples the action up to a newline,
(3) feeds ``Caption:`` and samples the caption, (4) feeds the image block, whose query states give z_t
through the regression head, and (5) feeds proj(z_t) into the ``<|vis|>`` slots, so every later step
conditions on it. Everything fed or sampled is appended to one KV cache: the history is never re-encoded
(``use_cache=False`` re-encodes it at every token instead, the baseline of ``benchmarks/plan_bench.py``).
``plan.merge_lora`` folds the adapter into the base weights before planning.

Every tensor the planner builds (token ids, visual states fed back, the banned-token index, the sampling
generator) lives on the director's device (``backbone.device``); the plan's embeddings come back on the CPU.

Continuation (editable plans): the kept steps of an existing plan (text and embeddings, possibly edited by
hand) are fed as they are, and generation goes on from the next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import RepetitionPenaltyLogitsProcessor

from director.backbone import DirectorError
from director.config import PlanConfig
from director.data import INITIAL, prompt_text
from director.model import Director, output_cache
from director.words import WordCheck


@dataclass
class PlannedStep:
    action: str
    caption: str
    embedding: torch.Tensor  # [D], on the CPU
    kept: bool = False  # True for steps carried over from an earlier plan


@dataclass
class PlanResult:
    steps: list[PlannedStep]
    ended_by_model: bool  # the model chose Done (rather than hitting --steps or plan.max_steps)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def embeddings(self) -> torch.Tensor:
        return torch.stack([s.embedding for s in self.steps]) if self.steps else torch.zeros(0)


class OutputHead:
    """The output projection restricted to some rows (``plan.output_vocab: trained``): logits of the other
    tokens are -inf, so they are never sampled, and a one-token forward reads a fraction of the output matrix
    (tied to the 49,152 x 576 input embeddings in SmolLM2: a fifth of the model's bytes)."""

    def __init__(self, weight: torch.Tensor, token_ids: list[int]) -> None:
        ids = sorted(set(token_ids))
        if ids and not 0 <= ids[0] <= ids[-1] < weight.shape[0]:
            raise DirectorError(f"output vocabulary ids outside this model's {weight.shape[0]} output rows")
        self.index = torch.tensor(ids, dtype=torch.long, device=weight.device)
        self.weight = weight.detach()[self.index].contiguous()  # [K, H]
        self.vocab = weight.shape[0]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, H] final hidden states -> [n, V] logits (-inf outside the rows)."""
        out = torch.full((hidden.shape[0], self.vocab), float("-inf"), device=hidden.device)
        out[:, self.index] = (hidden.to(self.weight.dtype) @ self.weight.T).float()
        return out


class _Feeder:
    """Feeds token ids (and visual states) to the director, with one growing KV cache or none."""

    def __init__(self, director: Director, use_cache: bool, head: OutputHead | None = None) -> None:
        from transformers import DynamicCache

        self.d, self.use_cache, self.head = director, use_cache, head
        self.device = director.device
        self.cache = DynamicCache() if use_cache else None
        self.ids: list[int] = []
        self.vis: list[torch.Tensor] = []
        self.n_forward_tokens = 0

    @torch.inference_mode()
    def feed(self, ids: list[int], vis: torch.Tensor | None = None, want_hidden: bool = False, every: bool = False):
        """Append ``ids`` (``vis`` [M, D] fills their <|vis|> slots); returns (last logits [V], last hidden [L, H]),
        or with ``every`` the logits after each of ``ids`` ([len(ids), V]) in place of the last ones."""
        self.ids += ids
        if vis is not None:
            vis = vis.to(self.device)  # kept steps' embeddings come from a plan file, on the CPU
            self.vis += list(vis)
        if self.use_cache:
            x = torch.tensor([ids], device=self.device)
            v = vis
        else:  # re-encode everything so far (the baseline)
            x = torch.tensor([self.ids], device=self.device)
            v = torch.stack(self.vis) if self.vis else None
        self.n_forward_tokens += x.shape[1]
        if self.head is not None:
            final, last_layer, cache = self.d.run_decoder(x, v, past_key_values=self.cache)
            if self.use_cache:
                self.cache = cache
            hidden = last_layer[0, -len(ids) :] if want_hidden else None
            logits = self.head(final[0, -len(ids) :] if every else final[0, -1:])
            return (logits, hidden) if every else (logits[0], hidden)
        out = self.d.run(x, v, past_key_values=self.cache, hidden=want_hidden)
        if self.use_cache:
            self.cache = output_cache(out)
        hidden = out.hidden_states[-1][0, -len(ids) :] if want_hidden else None
        if every:
            return out.logits[0, -len(ids) :].float(), hidden
        return out.logits[0, -1].float(), hidden

    def crop(self, n: int) -> None:
        """Forget everything after the first ``n`` tokens (rejected draft tokens); text tokens only."""
        drop = len(self.ids) - n
        self.ids = self.ids[:n]
        if self.cache is not None and drop > 0:
            self.cache.crop(-drop)  # transformers >= 5: a negative count removes that many tokens


def _norm(text: str) -> str:
    """An action as compared for verbatim repeats: lowercase, spaces collapsed, no final full stop."""
    return " ".join(text.lower().split()).rstrip(".")


def lookup_draft(context: list[int], k: int, max_ngram: int = 3) -> list[int]:
    """Prompt-lookup drafting (Saxena 2023; transformers' ``prompt_lookup_num_tokens``): find the latest earlier
    occurrence of the context's last ``n`` tokens (``n`` from ``max_ngram`` down to 1) and propose the up to ``k``
    tokens that followed it. Recipes repeat themselves ("add the ... to the pan"), so drafts are often right."""
    if k <= 0:
        return []
    for n in range(min(max_ngram, len(context) - 1), 0, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                return context[start + n : start + n + k]
    return []


class Planner:
    """Plans with a director; one instance serves many queries."""

    def __init__(self, director: Director, cfg: PlanConfig) -> None:
        self.d, self.cfg = director, cfg
        if cfg.merge_lora:
            director.merge_lora()
        tok = director.tokenizer
        self.tok = tok
        self.newline = self._ids("\n")
        self.step_tok = self._ids("Step")[0]
        self.done_tok = self._ids("Done")[0]
        if self.step_tok == self.done_tok:
            raise DirectorError("the tokenizer cannot tell 'Step' from 'Done'")
        banned = set(director.image_block_ids()) | {director.vis_id}
        self.device = director.device
        self.banned = torch.tensor(sorted(banned), device=self.device)
        self.stop_ids = {i for i in (tok.eos_token_id, tok.pad_token_id) if i is not None}
        self.penalty = RepetitionPenaltyLogitsProcessor(max(cfg.repetition_penalty, 1e-6))
        self.trained_vocab: set[int] | None = None
        self.words: WordCheck | None = None  # set per plan (the query's words join the lexicon)
        self._pieces: dict[int, str] = {}
        self._head: OutputHead | None = None
        self._head_extra: frozenset[int] = frozenset()
        if cfg.output_vocab == "trained":
            if director.output_vocab is None:
                raise DirectorError(
                    "plan.output_vocab=trained needs the checkpoint's output_vocab.json (this director has none; "
                    "set plan.output_vocab=full)"
                )
            always = {self.step_tok, self.done_tok, *self.newline, *self.stop_ids}
            self.trained_vocab = (set(director.output_vocab) | always) - banned

    def context_tokens(self) -> int:
        """The LM's context length (``max_position_embeddings`` of its text config; 2048 when it has none)."""
        text_cfg = self.d.base_lm().config.get_text_config()
        return int(getattr(text_cfg, "max_position_embeddings", None) or 2048)

    def step_tokens_max(self) -> int:
        """The most tokens one planned step can take: its header, action, caption and image block."""
        header = len(self._ids("Step 100.")) + len(self._ids("Caption:")) + 2 * len(self.newline)
        text = self.cfg.max_action_tokens + (self.cfg.max_caption_tokens if self.cfg.captions else 0)
        return header + text + len(self.d.image_block_ids()) + 1

    def step_tokens_min(self) -> int:
        """The fewest tokens one planned step takes (header, one action token, image block)."""
        return len(self._ids("Step 1.")) + 1 + len(self.newline) + len(self.d.image_block_ids())

    def _output_head(self, texts: list[str]) -> OutputHead | None:
        """The restricted output projection for a plan whose given text is ``texts`` (query, kept steps): their
        tokens join the trained vocabulary, so a plan can repeat a word of the query it never saw in training."""
        if self.trained_vocab is None:
            return None
        given = {t for text in texts for t in self._ids(text)}
        extra = frozenset(given - self.trained_vocab - set(self.banned.tolist()))
        if self._head is None or self._head_extra != extra:  # one plan's head never depends on another's query
            out = self.d.base_lm().get_output_embeddings()
            if hasattr(out, "lora_A") and not self.d.lora_merged:
                raise DirectorError(
                    "plan.output_vocab=trained with LoRA on the output projection needs plan.merge_lora"
                )
            self._head_extra = extra
            self._head = OutputHead(out.weight, sorted(self.trained_vocab | extra))
        return self._head

    def _end_threshold(self) -> float:
        captioned = self.cfg.captions and self.d.cfg.order in ("action_caption", "caption")
        return self.cfg.end_threshold_captions if captioned else self.cfg.end_threshold

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _piece(self, t: int) -> str:
        piece = self._pieces.get(t)
        if piece is None:
            piece = self._pieces[t] = self.tok.decode([t])
        return piece

    def _sample(
        self,
        logits: torch.Tensor,
        gen: torch.Generator,
        seen: list[int] | None = None,
        written: list[int] | None = None,
        ban: list[int] | None = None,
    ) -> int:
        """The next token of a text field: greedy or sampled, never a banned one, never a number first (training
        text never starts with one), and with the word check on, one that keeps the words of the field's text so far
        (``written``) real -- the next likeliest otherwise (greedy falls back to the likeliest when none of the 64
        likeliest would do). ``written`` None: not a text field (no checks)."""
        logits = logits.clone()
        if seen and self.cfg.repetition_penalty != 1.0:
            logits = self.penalty(torch.tensor([seen], device=logits.device), logits.unsqueeze(0))[0]
        logits[self.banned] = float("-inf")
        if ban:
            logits[ban] = float("-inf")
        check = self.words if written is not None else None
        text = self.tok.decode(written) if check is not None else ""
        first = written is not None and not written and self.cfg.ban_leading_numbers

        def fits(t: int) -> bool:
            if self._ends(t):  # ending here must not leave an unfinished word
                return check is None or check.allows(text, " ")
            piece = self._piece(t)
            # no field of the training text starts with a number: a caption forced after an action (most training
            # recipes have none) otherwise comes out as "5. A close-up ...", the model writing the next step number
            if first and piece.lstrip()[:1].isdigit():
                return False
            return check is None or check.allows(text, piece)

        if self.cfg.temperature <= 0:
            if check is None and not first:
                return int(logits.argmax())
            top = torch.topk(logits, min(64, logits.shape[-1])).indices.tolist()
            return next((t for t in top if fits(t)), top[0])
        probs = torch.softmax(logits / self.cfg.temperature, dim=-1)
        for _ in range(32):
            t = int(torch.multinomial(probs, 1, generator=gen))
            if fits(t):
                return t
            probs[t] = 0.0
            if float(probs.sum()) <= 0:
                break
            probs = probs / probs.sum()
        return int(torch.multinomial(torch.softmax(logits / self.cfg.temperature, dim=-1), 1, generator=gen))

    def _text(
        self,
        f: _Feeder,
        logits: torch.Tensor,
        limit: int,
        gen: torch.Generator,
        stats: dict,
        seen: list[int],
        ban: list[int] | None = None,
    ) -> str:
        """Sample text up to a newline (or ``limit`` tokens), then feed the canonical newline.

        ``seen`` holds the tokens of the same field in earlier steps (for the repetition penalty); the tokens
        sampled here are appended to it. ``ban``: tokens the text may not start with."""
        out: list[int] = []
        lookup = self.cfg.lookup_tokens if (self.cfg.temperature <= 0 and f.use_cache) else 0
        while len(out) < limit:
            t = self._sample(logits, gen, seen + out, out, ban=ban if not out else None)
            if self._ends(t):
                break
            out.append(t)
            draft = lookup_draft(f.ids + [t], min(lookup, limit - len(out)))
            t0 = time.perf_counter()
            if not draft:
                logits, _ = f.feed([t])
            else:
                # verify the draft in one forward: keep the longest prefix that greedy decoding would have
                # produced token by token, then drop the rest from the cache (the plan is unchanged)
                rows, _ = f.feed([t, *draft], every=True)
                kept = 0
                while kept < len(draft):
                    nxt = self._sample(rows[kept], gen, seen + out, out)
                    if nxt != draft[kept] or self._ends(nxt):
                        break
                    out.append(nxt)
                    kept += 1
                f.crop(len(f.ids) - (len(draft) - kept))
                logits = rows[kept]
                stats["draft_tokens"] = stats.get("draft_tokens", 0) + len(draft)
                stats["accepted_draft_tokens"] = stats.get("accepted_draft_tokens", 0) + kept
            stats["decode_seconds"] += time.perf_counter() - t0
            stats["decode_tokens"] += 1 + (kept if draft else 0)
            stats["decode_forwards"] = stats.get("decode_forwards", 0) + 1
        seen += out
        return self.tok.decode(out).strip()

    def _action(
        self, f: _Feeder, logits: torch.Tensor, gen: torch.Generator, stats: dict, seen: list[int], earlier: list[str]
    ) -> tuple[str, bool]:
        """The action of a step, never a verbatim repeat of an ``earlier`` one if ``plan.retry_repeated_actions``
        tries can avoid it: a repeat is taken back (the cache cropped to before it) and planned again with its
        first token banned. Small models decoded greedily fall into loops (Holtzman et al. 2020, "The Curious Case
        of Neural Text Degeneration"); a step that repeats an earlier one word for word is such a loop, while a
        repeated ingredient is not, so only verbatim repeats are refused. Returns (action, still a repeat)."""
        done = {_norm(a) for a in earlier}
        mark, n_seen, ban = len(f.ids), len(seen), []
        for attempt in range(self.cfg.retry_repeated_actions + 1):
            action = self._text(f, logits, self.cfg.max_action_tokens, gen, stats, seen, ban=ban)
            if _norm(action) not in done:
                return action, False
            if attempt == self.cfg.retry_repeated_actions or len(seen) == n_seen:
                break
            ban.append(seen[n_seen])  # the repeat's first token
            stats["discarded_tokens"] = stats.get("discarded_tokens", 0) + len(f.ids) - mark
            f.crop(mark)
            del seen[n_seen:]
            stats["repeat_retries"] = stats.get("repeat_retries", 0) + 1
        return action, True

    def _ends(self, t: int) -> bool:
        return t in self.stop_ids or "\n" in self.tok.decode([t])

    def _visual(self, f: _Feeder, z: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the image block; returns (predicted z [D] on the CPU, logits after the block). ``z`` overrides the
        input."""
        block = [self.d.img_begin_id, *self.d.query_ids, self.d.img_end_id]
        _, hidden = f.feed(block, want_hidden=True)
        with torch.inference_mode():
            pred = self.d.head(hidden[1 : 1 + len(self.d.query_ids)].unsqueeze(0).float())[0]
        z_in = pred if z is None else z
        logits, _ = f.feed([self.d.vis_id] * self.d.cfg.vis_tokens + self.newline, vis=z_in.unsqueeze(0))
        return pred.cpu(), logits

    def plan(
        self,
        query: str,
        steps: int | None = None,
        seed: int = 0,
        keep: list[tuple[str, str, torch.Tensor]] | None = None,
        use_cache: bool = True,
        initial: tuple[str, torch.Tensor] | None = None,
        on_text: Callable[[str, int, str], None] | None = None,
    ) -> PlanResult:
        """Plan ``query``; ``steps`` fixes the count (else the model ends it, within ``plan.max_steps``);
        ``keep`` carries over the first steps of an earlier plan ((action, caption, z) each). ``use_cache=False``
        re-encodes the history at every token (the baseline of ``benchmarks/plan_bench.py``). ``initial``
        (caption, z): the paper's initial image-text pair, fed after the prompt (``director plan --image``).
        ``on_text(kind, k, text)`` is called as soon as each piece of step ``k`` exists: ``"kept"`` (a carried-over
        step's action), ``"action"``, ``"caption"`` (so a CLI can print a plan while it is being planned)."""
        emit = on_text or (lambda kind, k, text: None)
        order = self.d.cfg.order
        gen = torch.Generator(device=self.device).manual_seed(seed)  # torch.multinomial samples on the logits' device
        prompt = prompt_text(query, self.d.neighbours)  # + the nearest other dish's recipe, when retrieval-augmented
        given = [prompt] + [" " + t.strip() for a, c, _ in keep or [] for t in (a, c)]
        head = self._output_head(given)
        self.words = WordCheck(given) if self.cfg.word_check else None
        f = _Feeder(self.d, use_cache, head)
        stats = {"decode_seconds": 0.0, "decode_tokens": 0, "prefill_seconds": 0.0}
        stats["output_rows"] = len(head.index) if head is not None else len(self.tok)
        t0 = time.perf_counter()
        logits, _ = f.feed(self._ids(prompt))
        if initial is not None:
            caption = self._ids(" " + initial[0].strip()) if initial[0].strip() else []
            f.feed(self._ids(INITIAL) + caption + self.newline)  # the pieces training tokenizes apart
            _, logits = self._visual(f, initial[1])
        stats["prefill_seconds"] += time.perf_counter() - t0
        result: list[PlannedStep] = []
        seen_actions: list[int] = []
        seen_captions: list[int] = []
        for action, caption, z in keep or []:
            k = len(result) + 1
            seen_actions += self._ids(" " + action.strip())
            seen_captions += self._ids(" " + caption.strip())
            t0 = time.perf_counter()
            f.feed(self._ids(f"Step {k}."))
            if order in ("action_caption", "action"):
                f.feed(self._ids(" " + action.strip()) + self.newline)
            if order in ("action_caption", "caption") and self.cfg.captions and caption.strip():
                f.feed(self._ids("Caption:") + self._ids(" " + caption.strip()) + self.newline)
            _, logits = self._visual(f, z)
            stats["prefill_seconds"] += time.perf_counter() - t0
            result.append(PlannedStep(action, caption, z, kept=True))
            emit("kept", k, action)
            if caption.strip():
                emit("caption", k, caption)
        ended = False
        limit = steps if steps is not None else self.cfg.max_steps
        room = self.context_tokens()
        while len(result) < limit:
            k = len(result) + 1
            if len(f.ids) + self.step_tokens_max() > room:  # the next step might not fit: the plan ends here
                stats["context_full"] = 1
                break
            if k > 1:
                pair = logits[[self.step_tok, self.done_tok]]
                stats.setdefault("p_done", []).append(float(torch.softmax(pair, -1)[1]))
            if steps is None and k > 1:
                if self.cfg.temperature > 0:
                    choice = int(torch.multinomial(torch.softmax(pair / self.cfg.temperature, -1), 1, generator=gen))
                else:
                    choice = int(stats["p_done"][-1] >= self._end_threshold())
                if choice == 1:
                    ended = True
                    break
            logits, _ = f.feed(self._ids(f"Step {k}."))
            action = caption = ""
            if order in ("action_caption", "action"):
                action, repeated = self._action(f, logits, gen, stats, seen_actions, [s.action for s in result])
                if repeated and steps is None:  # the director is looping: the recipe is over
                    ended = True
                    stats["ended_on_repeat"] = 1
                    break
                emit("action", k, action)
                logits, _ = f.feed(self.newline)
            if order in ("action_caption", "caption") and self.cfg.captions:
                logits, _ = f.feed(self._ids("Caption:"))
                caption = self._text(f, logits, self.cfg.max_caption_tokens, gen, stats, seen_captions)
                if caption:
                    emit("caption", k, caption)
                logits, _ = f.feed(self.newline)
            z, logits = self._visual(f)
            result.append(PlannedStep(action, caption, z))
        stats["forward_tokens"] = f.n_forward_tokens
        stats["context_tokens"] = len(f.ids)
        return PlanResult(result, ended, stats)
