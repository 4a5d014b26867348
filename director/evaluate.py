"""``director eval``: score recipe plans against YouCook2 ground truth.

VideoAuteur's director answers a query ``"how to make <dish>"`` with an ordered list of step actions. This
module scores any *planner* (a callable ``query -> list[str]``) on YouCook2's annotated videos:

Ground truth
    :func:`load_eval_videos` reads the official ``youcookii_annotations_trainval.json`` (``{"database":
    {VIDEO_ID: {"subset", "recipe_type", "annotations": [{"segment", "id", "sentence"}]}}}``) and
    ``label_foodtype.csv`` (``recipe_type,name`` rows, no header). One :class:`EvalVideo` per video of the
    requested official subset; its steps are the annotation sentences in temporal order.

Metrics (per video, then averaged over videos)
    * :func:`rouge_l` -- ROUGE-L F1 (``rouge-score``, Porter stemming) between the whole predicted plan and
      the whole reference plan, each joined into one text (the step boundaries do not matter, word order does).
    * :func:`ordered_semantic_similarity` -- an order-aware embedding score: predicted and reference steps are
      matched one-to-one without crossing (a monotone alignment, Needleman-Wunsch with free gaps) maximising the
      summed cosine similarity of all-MiniLM-L6-v2 sentence embeddings; the sum is divided by
      ``max(len(pred), len(ref))``, so missing or extra steps cost and shuffled steps lose.
    * :func:`step_count_error` -- ``|len(pred) - len(ref)|``.

Baselines that need no trained director
    :class:`RetrievalBaseline` (the steps of a training video of the same dish) and :class:`ZeroShotBaseline`
    (an instruct language model with a plain prompt; :func:`parse_steps` turns its answer into steps).

:func:`evaluate` runs every planner over every video, optionally through a JSONL cache of predictions that
lets a killed evaluation resume without planning finished items again; :func:`format_table` renders the
result as Markdown.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from auteur.errors import AuteurError
from auteur.sentence import EMBED_DIM, SentenceEncoder  # noqa: F401  (the metric's encoder is the project's one)

log = logging.getLogger(__name__)

SPLITS = ("training", "validation")
MAX_STEPS = 20
QUERY_PREFIX = "how to make "
ZERO_SHOT_PROMPT = "List the steps to {query}. Answer with a numbered list of short steps, one per line."

Planner = Callable[[str], list[str]]


class EvalError(AuteurError):
    """A missing or malformed evaluation input (annotations, labels, cache, encoder) or a bad planner answer."""


# ----------------------------------------------------------------------------------------------- ground truth


@dataclass
class EvalVideo:
    """One evaluation item: a YouCook2 video's dish, its query and its reference steps (temporal order)."""

    video_id: str
    dish: str
    query: str
    steps: list[str]


def make_query(dish: str) -> str:
    """The director's query for ``dish``: ``"how to make <dish>"``."""
    return f"{QUERY_PREFIX}{dish}"


def dish_of_query(query: str) -> str:
    """Invert :func:`make_query` (case-insensitive prefix, surrounding blanks and a final ``?`` ignored)."""
    q = query.strip().rstrip("?").strip()
    if q.lower().startswith(QUERY_PREFIX):
        q = q[len(QUERY_PREFIX) :]
    return q.strip()


def _read_labels(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise EvalError(f"labels file not found: {path}")
    out: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise EvalError(f"labels file {path} line {i + 1}: expected 'recipe_type,name', got {row}")
                out[row[0].strip()] = row[1].strip()
    except (UnicodeDecodeError, csv.Error) as e:
        raise EvalError(f"labels file {path} is not a readable CSV: {e}") from None
    return out


def _segment_start(ann: dict) -> float:
    seg = ann.get("segment")
    try:
        return float(seg[0])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return float("inf")


def load_eval_videos(
    annotations: str | Path, labels: str | Path | None, split: Literal["training", "validation"]
) -> list[EvalVideo]:
    """Read the videos of one official YouCook2 subset (``"training"`` or ``"validation"``), in file order.

    The dish is the ``label_foodtype.csv`` name of the video's ``recipe_type`` (the id itself when ``labels``
    is None or lacks it); the query is ``"how to make <dish>"``; the steps are the non-empty annotation
    sentences (stripped) sorted by segment start (ties keep file order). Videos with no steps are left out
    (logged). Raises :class:`EvalError` for a missing or malformed file or an unknown split.
    """
    if split not in SPLITS:
        raise EvalError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    path = Path(annotations)
    if not path.is_file():
        raise EvalError(f"YouCook2 annotations not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise EvalError(f"YouCook2 annotations {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except UnicodeDecodeError:
        raise EvalError(f"YouCook2 annotations {path} is not UTF-8 text") from None
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise EvalError(f"YouCook2 annotations {path}: expected an object with a 'database' mapping")
    names = _read_labels(Path(labels)) if labels is not None else {}

    videos: list[EvalVideo] = []
    empty = 0
    for vid, entry in data["database"].items():
        if not isinstance(entry, dict):
            raise EvalError(f"YouCook2 annotations {path}: video {vid} is not an object")
        if entry.get("subset") != split:
            continue
        anns = entry.get("annotations")
        if not isinstance(anns, list):
            raise EvalError(f"YouCook2 annotations {path}: video {vid} has no 'annotations' list")
        anns = [a for a in anns if isinstance(a, dict) and isinstance(a.get("sentence"), str)]
        steps = [a["sentence"].strip() for a in sorted(anns, key=_segment_start)]
        steps = [s for s in steps if s]
        if not steps:
            empty += 1
            continue
        recipe = str(entry.get("recipe_type", "")).strip()
        dish = names.get(recipe, recipe)
        videos.append(EvalVideo(video_id=str(vid), dish=dish, query=make_query(dish), steps=steps))
    if videos:  # none: the caller's one-line error says so
        if empty:
            log.warning("%d %s video(s) without annotated steps left out", empty, split)
        log.info("%d %s videos, %d steps", len(videos), split, sum(len(v.steps) for v in videos))
    return videos


# ---------------------------------------------------------------------------------------------------- metrics

_ROUGE = None


def _rouge_scorer() -> Any:
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _ROUGE


def rouge_l(pred: list[str], ref: list[str]) -> float:
    """ROUGE-L F1 between the predicted and the reference plan, each treated as one text, in [0, 1].

    Each plan's steps are joined with ``"\\n"``; ``rouge-score`` then lowercases, keeps alphanumeric tokens
    and applies the Porter stemmer, so ``F = 2PR / (P + R)`` with ``P = LCS / |pred tokens|`` and
    ``R = LCS / |ref tokens|`` over the longest common token subsequence of the two whole plans. An empty plan
    (no tokens) on either side scores 0.
    """
    score = _rouge_scorer().score("\n".join(ref), "\n".join(pred))["rougeL"]
    return float(score.fmeasure)


def step_count_error(pred: list[str], ref: list[str]) -> int:
    """The absolute difference in number of steps, ``|len(pred) - len(ref)|``."""
    return abs(len(pred) - len(ref))


def medoid(plans: list[list[str]], utility: Callable[[list[str], list[str]], float]) -> int:
    """Index of the plan with the highest mean ``utility`` against the other plans (the first on a tie; 0 for a
    single plan). Used for the most typical training recipe of a dish (``scripts/build_typical_recipes.py``,
    ``scripts/director_eval_ceiling.py``) and for minimum-Bayes-risk choice among sampled plans
    (``scripts/director_sampling_probe.py``)."""
    if len(plans) < 2:
        return 0

    def typicality(i: int) -> float:
        return sum(utility(plans[i], b) for j, b in enumerate(plans) if j != i) / (len(plans) - 1)

    return max(range(len(plans)), key=typicality)


def _align(sim: torch.Tensor) -> float:
    """The best summed similarity of a monotone one-to-one partial matching of rows to columns of ``sim``.

    A matching pairs some rows ``i1 < i2 < ...`` with some columns ``j1 < j2 < ...`` in order (no crossing,
    each row and column used at most once, any number left unmatched for free); the dynamic programme
    ``D[i][j] = max(D[i-1][j], D[i][j-1], D[i-1][j-1] + sim[i-1][j-1])`` returns the maximum of the matched
    similarities' sum, ``D[m][n]`` (0 for an empty matrix; never negative, since the empty matching scores 0).
    """
    m, n = sim.shape
    if m == 0 or n == 0:
        return 0.0
    s = sim.detach().to("cpu", torch.float64).tolist()
    prev = [0.0] * (n + 1)
    for i in range(1, m + 1):
        cur = [0.0] * (n + 1)
        row = s[i - 1]
        for j in range(1, n + 1):
            cur[j] = max(prev[j], cur[j - 1], prev[j - 1] + row[j - 1])
        prev = cur
    return prev[n]


def ordered_semantic_similarity(pred: list[str], ref: list[str], enc: SentenceEncoder) -> float:
    """Order-aware semantic similarity of a predicted plan to a reference plan, in [0, 1].

    Definition: embed every step with ``enc`` (unit vectors, so dot product = cosine similarity) and build
    ``S[i][j] = cos(pred_i, ref_j)``. Among all *monotone one-to-one* alignments (pairs ``(i1, j1), (i2, j2),
    ...`` with ``i1 < i2 < ...`` and ``j1 < j2 < ...``; unmatched steps on either side allowed), take the one
    that maximises the sum of its pairs' similarities (dynamic programming, Needleman-Wunsch with zero gap
    cost; see :func:`_align`). The score is that sum divided by ``max(len(pred), len(ref))``::

        score = max_alignment sum_{(i, j)} S[i][j] / max(len(pred), len(ref))

    So a perfect plan scores 1; each missing or extra step dilutes the score by the longer length; steps in the
    wrong order cannot all be matched (matches may not cross); pairs with negative similarity are never worth
    matching, so the score is in [0, 1]. An empty plan on either side scores 0.
    """
    if not pred or not ref:
        return 0.0
    emb = enc.encode(list(pred) + list(ref))
    sim = emb[: len(pred)] @ emb[len(pred) :].T
    return _align(sim) / max(len(pred), len(ref))


# -------------------------------------------------------------------------------------------------- baselines


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


class RetrievalBaseline:
    """Plan by retrieval: answer with the steps of one training video of the query's dish.

    The dish is read back from the query (``"how to make <dish>"``, see :func:`dish_of_query`) and matched to
    the training dishes case-insensitively. When no training video has exactly that dish, the dish sharing the
    most words with it is used (Jaccard overlap of lowercase words; ties to the more common dish, then the
    alphabetically first); when none shares a word, the most common training dish. Among the videos of the
    chosen dish the answer is fixed per dish: the first video after sorting their ids and shuffling them with
    ``random.Random(seed)``. It only ever sees ``train_videos``, so evaluated on validation it can never
    return the evaluated video's own steps.
    """

    def __init__(self, train_videos: list[EvalVideo], seed: int = 0) -> None:
        if not train_videos:
            raise EvalError("the retrieval baseline needs at least one training video")
        by_dish: dict[str, list[EvalVideo]] = {}
        for v in train_videos:
            by_dish.setdefault(v.dish.strip().lower(), []).append(v)
        self.seed = seed
        self.choice: dict[str, EvalVideo] = {}
        for dish in sorted(by_dish):
            vids = sorted(by_dish[dish], key=lambda v: v.video_id)
            random.Random(f"{seed}:{dish}").shuffle(vids)
            self.choice[dish] = vids[0]
        self.counts = Counter({d: len(vs) for d, vs in by_dish.items()})
        self.most_common = min(self.counts, key=lambda d: (-self.counts[d], d))

    def dish_for(self, query: str) -> str:
        """The training dish (lowercase) whose video answers ``query``."""
        dish = dish_of_query(query).lower()
        if dish in self.choice:
            return dish
        words = _words(dish)

        def key(d: str) -> tuple[float, int, str]:
            other = _words(d)
            union = words | other
            return (-(len(words & other) / len(union) if union else 0.0), -self.counts[d], d)

        best = min(self.choice, key=key)
        if words & _words(best):
            log.debug("no training video of %r: using the closest dish %r", dish, best)
            return best
        log.debug("no training video of %r and no similar dish: using the most common dish", dish)
        return self.most_common

    def __call__(self, query: str) -> list[str]:
        """The steps of the chosen training video of the query's dish (a fresh list)."""
        return list(self.choice[self.dish_for(query)].steps)


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_MARKER = re.compile(
    r"^(?:(?:step\s*)?\d{1,3}\s*[.):\-](?!\d)|step\s*\d{1,3}\b|[-*+\u2022\u2023\u25e6\u2013\u2014])\s*", re.IGNORECASE
)
_INLINE_NUMBER = re.compile(r"(?:^|\s)\d{1,2}[.)]\s+")


def parse_steps(text: str, max_steps: int = MAX_STEPS) -> list[str]:
    """Turn a model's answer into steps: one per numbered or bulleted line, at most ``max_steps``.

    ``<think>...</think>`` blocks are dropped. A line is a *marked* step when it starts with a number
    (``1.``, ``1)``, ``1:``, ``1-``, ``Step 1:``) or a bullet (``-``, ``*``, ``+``, ``•``, dashes); the marker and
    Markdown emphasis (``**``, ``__``) are stripped. When any line is marked, only marked lines count (a
    preamble like "Here are the steps:" is dropped); otherwise every non-empty line is a step, and a single
    line holding an inline numbered list (``"1. a 2. b"``) is split at its numbers (text before the first number
    dropped). Empty steps are skipped.
    """
    text = _THINK.sub("", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) == 1 and len(_INLINE_NUMBER.findall(lines[0])) >= 2:
        steps = _INLINE_NUMBER.split(lines[0])[1:]  # text before the first number is a preamble
    else:
        marked = [_MARKER.sub("", ln, count=1) for ln in lines if _MARKER.match(ln)]
        steps = marked if marked else lines
    out = []
    for s in steps:
        s = s.replace("**", "").replace("__", "").strip().strip("`").strip()
        if s:
            out.append(s)
    return out[:max_steps]


class ZeroShotBaseline:
    """Plan with an instruct language model and a plain prompt, zero-shot (no fine-tuning, no examples).

    The user message is ``"List the steps to {query}. Answer with a numbered list of short steps, one per
    line."`` rendered with the tokenizer's chat template (the bare prompt when it has none); decoding is
    greedy (deterministic) for at most ``max_new_tokens`` tokens; :func:`parse_steps` reads the steps (at most
    20) from the generated text.
    """

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 160) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.model.eval()

    def prompt(self, query: str) -> str:
        """The text fed to the model for ``query`` (chat-templated when the tokenizer has a template)."""
        return self._wrap(ZERO_SHOT_PROMPT.format(query=query.strip().rstrip("?.").strip()))

    def _wrap(self, content: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        return content + "\n"

    def generate(self, query: str) -> str:
        """The model's raw answer to ``query`` (greedy)."""
        return self._generate(self.prompt(query))

    def generate_from(self, content: str) -> str:
        """The model's raw answer to a user message of its own (greedy), e.g. one that shows an example recipe."""
        return self._generate(self._wrap(content))

    @torch.inference_mode()
    def _generate(self, text: str) -> str:
        templated = getattr(self.tokenizer, "chat_template", None)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        out = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad
        )
        new = out[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def __call__(self, query: str) -> list[str]:
        """The steps the model proposes for ``query`` (at most 20)."""
        return parse_steps(self.generate(query))


# ------------------------------------------------------------------------------------------------- evaluation


def read_cache(path: Path) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """Read a prediction cache (``OUT/plans.jsonl`` of ``director eval``): ``{(planner, video id): (query, steps)}``;
    bad lines (a partial last line from a kill) are skipped."""
    cache: dict[tuple[str, str], tuple[str, list[str]]] = {}
    if not path.exists():
        return cache
    if not path.is_file():
        raise EvalError(f"prediction cache {path} is not a file")
    bad = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
                key = (rec["planner"], rec["video_id"])
                steps = rec["steps"]
                query = rec["query"]
                if not (isinstance(steps, list) and all(isinstance(s, str) for s in steps)):
                    raise TypeError("steps")
                if not all(isinstance(x, str) for x in (*key, query)):
                    raise TypeError("key")
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            cache[key] = (query, steps)
    if bad:
        log.warning("prediction cache %s: %d unreadable line(s) ignored (a killed run's partial line?)", path, bad)
    return cache


def _open_cache_for_append(path: Path) -> Any:
    """Open the cache for appending, first cutting off a partial last line (no final newline) left by a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    return path.open("a", encoding="utf-8")


def _check_steps(name: str, query: str, steps: Any) -> list[str]:
    if not isinstance(steps, (list, tuple)) or not all(isinstance(s, str) for s in steps):
        raise EvalError(f"planner {name!r} answered {query!r} with {type(steps).__name__}, not a list of str")
    return list(steps)


def _progress(items: Iterable, enabled: bool, desc: str, total: int) -> Iterable:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit="video")


def evaluate(
    planners: dict[str, Planner],
    videos: list[EvalVideo],
    enc: SentenceEncoder,
    progress: bool = True,
    cache_path: Path | None = None,
    dedupe_queries: bool = False,
) -> dict[str, dict[str, float]]:
    """Run every planner on every video's query and average the metrics over the videos.

    Returns ``{planner: {"rouge_l", "semantic_sim", "step_count_error", "pred_steps", "n"}}``: the means over
    the ``n`` videos of :func:`rouge_l`, :func:`ordered_semantic_similarity` and :func:`step_count_error`, and
    the mean number of predicted steps.

    With ``cache_path``, every prediction is appended to that JSONL file as soon as it is made (one line
    ``{"planner", "video_id", "query", "steps"}``, flushed), and predictions already there for the same
    planner name, video and query are reused instead of planning again: a killed evaluation resumes where it
    stopped. A partial last line (killed mid-write) is ignored and cut off before appending. With
    ``dedupe_queries`` a planner is called once per distinct query (videos of the same dish share the answer;
    right for deterministic planners, e.g. greedy decoding).
    """
    if len(set(v.video_id for v in videos)) != len(videos):
        raise EvalError("evaluation videos must have distinct video ids")
    cache = read_cache(Path(cache_path)) if cache_path is not None else {}
    sink = _open_cache_for_append(Path(cache_path)) if cache_path is not None else None
    preds: dict[str, list[list[str]]] = {}
    try:
        for name, planner in planners.items():
            answers: dict[str, list[str]] = {}
            out: list[list[str]] = []
            reused = 0
            for v in _progress(videos, progress, f"planning [{name}]", len(videos)):
                hit = cache.get((name, v.video_id))
                if hit is not None and hit[0] == v.query:
                    out.append(list(hit[1]))
                    reused += 1
                    continue
                if dedupe_queries and v.query in answers:
                    steps = list(answers[v.query])
                else:
                    steps = _check_steps(name, v.query, planner(v.query))
                    answers[v.query] = steps
                out.append(steps)
                if sink is not None:
                    rec = {"planner": name, "video_id": v.video_id, "query": v.query, "steps": steps}
                    sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    sink.flush()
            if reused:
                log.info("planner %s: %d of %d predictions reused from %s", name, reused, len(videos), cache_path)
            preds[name] = out
    finally:
        if sink is not None:
            sink.flush()
            os.fsync(sink.fileno())
            sink.close()

    # embed every distinct string once, in large batches
    enc.encode(
        list(dict.fromkeys([s for v in videos for s in v.steps] + [s for p in preds.values() for x in p for s in x]))
    )
    results: dict[str, dict[str, float]] = {}
    for name, out in preds.items():
        n = len(videos)
        r = sum(rouge_l(p, v.steps) for p, v in zip(out, videos))
        s = sum(ordered_semantic_similarity(p, v.steps, enc) for p, v in zip(out, videos))
        e = sum(step_count_error(p, v.steps) for p, v in zip(out, videos))
        k = sum(len(p) for p in out)
        results[name] = {
            "rouge_l": r / n if n else 0.0,
            "semantic_sim": s / n if n else 0.0,
            "step_count_error": e / n if n else 0.0,
            "pred_steps": k / n if n else 0.0,
            "n": n,
        }
        log.info("%s: %s", name, results[name])
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of :func:`evaluate`'s results: planner | ROUGE-L | semantic sim | step-count error | n."""
    lines = [
        "| planner | ROUGE-L | semantic sim | step-count error | n |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in results.items():
        lines.append(
            f"| {name} | {m['rouge_l']:.4f} | {m['semantic_sim']:.4f} | {m['step_count_error']:.2f} | {int(m['n'])} |"
        )
    return "\n".join(lines) + "\n"


PLANS_KEY = "plans.key.json"


def plans_key(cfg: Any, with_director: bool) -> dict[str, Any]:
    """What the cached director plans depend on: the checkpoint's files (sha256), the plan and backbone settings."""
    from dataclasses import asdict

    from auteur.latent_cache import fingerprint
    from auteur.vision import file_sha256

    if not with_director:
        return {"director": None}
    files = {f.name: file_sha256(f) for f in sorted(Path(cfg.checkpoint).iterdir()) if f.is_file()}
    key = {"checkpoint": fingerprint(files), "plan": asdict(cfg.plan), "backbone": asdict(cfg.backbone)}
    return {"director": json.loads(json.dumps(key, sort_keys=True, default=str))}


def check_plans_key(out: Path, key: dict[str, Any]) -> None:
    """Refuse to resume ``out/plans.jsonl`` made by another director checkpoint or other plan settings (its plans
    would be reused as if this planner had made them); record ``key`` for a fresh folder."""
    from auteur.io import atomic_write_json
    from auteur.latent_cache import fingerprint

    want = fingerprint(key)
    try:
        have = json.loads((out / PLANS_KEY).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        have = None
    if (out / "plans.jsonl").exists() and have != want:
        raise EvalError(
            f"{out} holds plans made with another checkpoint or plan settings (or before they were recorded): "
            f"give a new --out, or delete {out / 'plans.jsonl'} to plan again"
        )
    if have != want:
        atomic_write_json(out / PLANS_KEY, {"key": want, "settings": key})


def run_eval(cfg: Any, args: Any) -> str:
    """``director eval``: plan every evaluated video's query with the configured director (and, with
    ``--baselines``, the zero-shot base model and retrieval), score against the ground truth, write
    ``OUT/results.json`` and ``OUT/results.md``, and return the Markdown table.

    Plans are greedy, so each distinct query (one per dish) is planned once; plans are cached in
    ``OUT/plans.jsonl`` so an interrupted evaluation resumes where it stopped.
    """
    from auteur.io import atomic_write_json, atomic_write_text, check_writable_place, ensure_writable_dir, writer_lock
    from auteur.plan import VisualSpace
    from director.backbone import load_backbone
    from director.checkpoint import build_director
    from director.plan import Planner

    annotations = Path(args.annotations)
    labels = args.labels or (annotations.parent / "label_foodtype.csv")
    labels = labels if Path(labels).is_file() else None
    unseen = getattr(args, "unseen", False)
    with_director = not getattr(args, "skip_director", False)
    if not with_director and not args.baselines:
        raise EvalError("--skip-director leaves nothing to score without --baselines")
    if args.limit is not None and args.limit < 1:
        raise EvalError("--limit must be at least 1")
    if with_director and cfg.checkpoint is None:
        raise EvalError("the preset has no trained director checkpoint to evaluate")
    check_writable_place(args.out)  # before anything is read, written or loaded
    seen_only = getattr(args, "seen_only", False)
    if unseen and seen_only:
        raise EvalError("--unseen and --seen-only exclude each other: the held-out dishes, or the others")
    if unseen:
        from director.unseen import check_not_trained_on, read_split, split_videos

        held_out = read_split()
        videos, seen_train = split_videos(annotations, labels, held_out)
    else:
        videos = load_eval_videos(annotations, labels, args.split)
        if seen_only:
            from director.unseen import read_split

            held = set(read_split().names)
            videos = [v for v in videos if v.dish not in held]
    if not videos:
        raise EvalError(f"no {'held-out' if unseen else args.split} videos with annotated steps in {annotations}")
    if args.limit is not None:
        videos = videos[: args.limit]
    if with_director and unseen:
        check_not_trained_on(cfg.checkpoint, held_out)  # before anything is written or loaded
    with writer_lock(args.out):  # one evaluation per --out (plans.jsonl is appended to)
        out = ensure_writable_dir(args.out)
        cfg.plan.captions = False  # actions are what is scored; captions would only cost time
        cfg.plan.temperature = 0.0
        check_plans_key(out, plans_key(cfg, with_director))  # a resumed --out must hold plans of the same planner
        planners: dict[str, Callable[[str], list[str]]] = {}
        base_model_id = None
        if with_director:
            director, backbone, meta = build_director(
                cfg.backbone, cfg.model, VisualSpace("unset", 1), cfg.checkpoint, fold_lora=cfg.plan.merge_lora
            )
            base_model_id = backbone.model_id
            planner = Planner(director, cfg.plan)
            planners["director"] = lambda q: [s.action for s in planner.plan(q, seed=0).steps]
        enc = SentenceEncoder()
        if args.baselines:
            base = load_backbone(cfg.backbone)
            base_model_id = base.model_id
            planners["zero-shot base model"] = ZeroShotBaseline(base.model, base.tokenizer)
            if unseen:
                from director.unseen import (
                    NearestDish,
                    NearestDishRetrieval,
                    NearestDishTypical,
                    NeighbourPromptBaseline,
                )

                nearest = NearestDish(seen_train, enc)
                planners["nearest-dish retrieval (a training video)"] = NearestDishRetrieval(nearest)
                typical = NearestDishTypical(nearest)
                planners["nearest-dish typical recipe"] = typical
                planners["zero-shot shown the nearest-dish typical recipe"] = NeighbourPromptBaseline(
                    planners["zero-shot base model"], typical
                )
            else:
                planners["retrieval (same-dish training video)"] = RetrievalBaseline(
                    load_eval_videos(annotations, labels, "training")
                )
        results = evaluate(planners, videos, enc, cache_path=out / "plans.jsonl", dedupe_queries=True)
        if unseen and args.baselines:
            from director.unseen import calibration

            results["real-video calibration (another video of the dish)"] = calibration(videos, enc)
        table = format_table(results)
        atomic_write_json(
            out / "results.json",
            {
                "split": "unseen dishes (director/eval/unseen_dishes.json)"
                if unseen
                else args.split + (" (seen dishes only)" if seen_only else ""),
                "videos": len(videos),
                "results": results,
                "checkpoint": str(cfg.checkpoint) if with_director else None,
                "base_model": base_model_id,
            },
        )
        atomic_write_text(out / "results.md", table + "\n")
        return table
