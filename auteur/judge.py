"""The StoryAnchors pairwise judge protocol (Wang et al., 2025, arXiv:2505.08350, Sec. 4 and appendix).

For one prompt and two systems A and B, a vision-language judge holds a three-round conversation:

1. round 1: the prompt and system A's frames (as "Story 1"); the judge acknowledges/describes them;
2. round 2: system B's frames (as "Story 2");
3. round 3: the rubric of one dimension; the judge answers with the better story or a tie.

Dimensions: Narrative Quality (NQ), Subject Consistency (SC), Prompt-Frame Alignment (PFA), Shot Diversity
(ShotD), Scene Diversity (SceneD). Each pair is judged in both orders (A as Story 1, then B as Story 1); A wins
only when both orders prefer A, loses only when both prefer B, and anything else is a tie. An answer that
cannot be parsed is re-asked up to ``retries`` times with a reminder of the answer format; if it still cannot
be parsed the outcome is recorded as ``unparseable`` (and left out of the win/tie/loss counts), never guessed.

The rubric texts below are this project's paraphrase of the paper's appendix criteria (the exact appendix
wording was not available offline); they keep each dimension's definition and the three-way answer. A YAML
file given as ``judge_rubrics`` (:func:`load_rubrics`) replaces them, e.g. with the appendix's exact text.

Judges (:class:`Judge`): :class:`OpenAIJudge` for any OpenAI-compatible chat endpoint (``AUTEUR_JUDGE_URL``,
``AUTEUR_JUDGE_MODEL``, ``AUTEUR_JUDGE_API_KEY``; plain ``urllib``), and :class:`LocalVLMJudge` for a
transformers vision-language model in a local folder. Every request is cached on disk under the SHA-256 of
the full request (model id, messages, image bytes), so rerunning a comparison costs no judge calls.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from auteur.errors import AuteurError
from auteur.io import atomic_write_json

log = logging.getLogger(__name__)


class JudgeError(AuteurError):
    """A judge that cannot be reached or configured."""


RUBRICS: dict[str, tuple[str, str]] = {
    "NQ": (
        "Narrative Quality",
        "Judge which story tells the prompt's story better as a sequence: the frames follow a clear, logical "
        "order of events from beginning to end, each frame advances the story, and the transitions between "
        "frames make sense without missing or contradictory steps.",
    ),
    "SC": (
        "Subject Consistency",
        "Judge which story keeps its main subjects (characters, their faces, clothing and body; key objects "
        "and dishes) more consistent across frames: the same subject should look like the same individual or "
        "object in every frame in which it appears, apart from changes the story itself calls for.",
    ),
    "PFA": (
        "Prompt-Frame Alignment",
        "Judge which story's frames match the prompt and the per-frame descriptions more faithfully: the "
        "subjects, actions, objects, settings and attributes that the text asks for are present and correct, "
        "and nothing contradicts it.",
    ),
    "ShotD": (
        "Shot Diversity",
        "Judge which story uses a richer variety of shots: different camera distances (close-up, medium, wide), "
        "angles and compositions across frames, rather than repeating one framing, while staying coherent.",
    ),
    "SceneD": (
        "Scene Diversity",
        "Judge which story shows a richer variety of scenes where the narrative calls for it: different "
        "locations, backgrounds, lighting or times of day across events, rather than one unchanging backdrop.",
    ),
}
DIMENSIONS = tuple(RUBRICS)
ANSWER_FORMAT = "Answer with exactly one final line: 'Winner: Story 1', 'Winner: Story 2' or 'Winner: Tie'."
_ANSWER = re.compile(r"winner\s*[:：]\s*(story\s*1|story\s*2|tie)\b", re.IGNORECASE)


def parse_answer(text: str) -> str | None:
    """'1', '2' or 'tie' from a round-3 answer (the last 'Winner: ...' line), or None if there is none."""
    found = _ANSWER.findall(text or "")
    if not found:
        return None
    last = re.sub(r"\s+", "", found[-1].lower())
    return {"story1": "1", "story2": "2", "tie": "tie"}[last]


# ----------------------------------------------------------------------------------------------- judges


class Judge(Protocol):
    """A chat model that sees images: ``model_id`` (part of the cache key) and ``chat(messages) -> str``.

    ``messages`` use the OpenAI chat format: ``{"role", "content": [{"type": "text", "text"} |
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}``.
    """

    model_id: str

    def chat(self, messages: list[dict[str, Any]]) -> str: ...


class OpenAIJudge:
    """Any OpenAI-compatible ``/chat/completions`` endpoint, temperature 0, via urllib (no extra package)."""

    def __init__(self, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120.0, max_tokens: int = 512) -> None:  # fmt: skip
        self.url = (url or os.environ.get("AUTEUR_JUDGE_URL", "")).rstrip("/")
        self.model_id = model or os.environ.get("AUTEUR_JUDGE_MODEL", "")
        self.api_key = api_key if api_key is not None else os.environ.get("AUTEUR_JUDGE_API_KEY", "")
        if not self.url or not self.model_id:
            raise JudgeError("the OpenAI-compatible judge needs AUTEUR_JUDGE_URL and AUTEUR_JUDGE_MODEL")
        self.timeout_s, self.max_tokens = timeout_s, max_tokens

    def chat(self, messages: list[dict[str, Any]]) -> str:
        body = json.dumps(
            {"model": self.model_id, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        ).encode()
        endpoint = self.url if self.url.endswith("/chat/completions") else self.url + "/chat/completions"
        req = urllib.request.Request(endpoint, data=body, headers={"Content-Type": "application/json"})
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.loads(resp.read().decode("utf-8"))
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise JudgeError(f"judge endpoint {endpoint} failed: {e}") from None
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {endpoint} returned no choices[0].message.content") from None


class LocalVLMJudge:
    """A transformers image-text-to-text model from a local folder (e.g. Qwen2-VL), greedy decoding."""

    def __init__(self, path: str | Path, device: str = "cpu", max_new_tokens: int = 256) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path).expanduser()
        if not path.is_dir():
            raise JudgeError(f"local judge model folder not found: {path}")
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype="float32")
        self.model.to(device).eval()
        self.model_id, self.device, self.max_new_tokens = f"local:{path.resolve()}", device, max_new_tokens

    def chat(self, messages: list[dict[str, Any]]) -> str:
        import io

        import torch
        from PIL import Image

        conv = []
        for m in messages:
            parts = []
            for c in m["content"]:
                if c["type"] == "text":
                    parts.append({"type": "text", "text": c["text"]})
                else:
                    raw = base64.b64decode(c["image_url"]["url"].split(",", 1)[1])
                    parts.append({"type": "image", "image": Image.open(io.BytesIO(raw)).convert("RGB")})
            conv.append({"role": m["role"], "content": parts})
        inputs = self.processor.apply_chat_template(
            conv, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]


def check_judge(spec: str, dimensions: Sequence[str] = DIMENSIONS) -> None:
    """Check a judge set-up without loading or calling anything (a comparison checks it before it runs the
    systems, so a typo costs nothing): a known judge kind, its endpoint variables or model folder, and the
    dimensions."""
    if spec == "openai":
        OpenAIJudge()  # reads and checks the environment only
    elif spec.startswith("local:"):
        path = Path(spec.removeprefix("local:")).expanduser()
        if not path.is_dir():
            raise JudgeError(f"local judge model folder not found: {path}")
    else:
        raise JudgeError(f"unknown judge {spec!r}: use 'openai' or 'local:PATH'")
    for dim in dimensions:
        if dim not in RUBRICS:
            raise JudgeError(f"unknown judge dimension {dim!r}; choose from {', '.join(DIMENSIONS)}")


def make_judge(spec: str) -> Judge:
    """``openai`` (endpoint from the environment) or ``local:PATH`` (a transformers VLM folder)."""
    check_judge(spec, ())
    if spec == "openai":
        return OpenAIJudge()
    return LocalVLMJudge(spec.removeprefix("local:"))


# ------------------------------------------------------------------------------------------------ cache


class JudgeCache:
    """Responses on disk, one JSON file per request, named by the SHA-256 of the request."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(model_id: str, messages: list[dict[str, Any]]) -> str:
        blob = json.dumps({"model": model_id, "messages": messages}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def chat(self, judge: Judge, messages: list[dict[str, Any]]) -> tuple[str, bool]:
        """The judge's reply to ``messages`` and whether it came from the cache."""
        key = self.key(judge.model_id, messages)
        path = self.folder / f"{key[:2]}" / f"{key}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))["response"], True
            except (json.JSONDecodeError, KeyError):
                log.warning("ignoring corrupt judge cache entry %s", path)
        reply = judge.chat(messages)
        atomic_write_json(path, {"model": judge.model_id, "response": reply})
        return reply, False


# --------------------------------------------------------------------------------------------- protocol


def image_part(path: str | Path) -> dict[str, Any]:
    """An OpenAI ``image_url`` content part holding the file's bytes as a data URI."""
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


@dataclass
class Story:
    """One system's output for a prompt: its frames (image paths, in order) and per-frame texts."""

    system: str
    frames: list[Path]
    texts: list[str] = field(default_factory=list)


def _story_message(label: str, prompt: str, story: Story) -> dict[str, Any]:
    content = [_text(f"{label} for the prompt: {prompt!r}. It has {len(story.frames)} frames, in order.")]
    for i, frame in enumerate(story.frames):
        desc = story.texts[i] if i < len(story.texts) and story.texts[i] else ""
        content.append(_text(f"Frame {i + 1}" + (f": {desc}" if desc else "")))
        content.append(image_part(frame))
    content.append(_text("Describe this story briefly; you will be asked to compare it with another one."))
    return {"role": "user", "content": content}


@dataclass
class OrderVerdict:
    """One order's answer: the winner in terms of systems ('A', 'B', 'tie') or None if unparseable."""

    winner: str | None
    responses: list[str]
    calls: int


def load_rubrics(path: str | Path | None) -> dict[str, tuple[str, str]]:
    """The rubrics: :data:`RUBRICS`, with the texts of a YAML file (``{NQ: "...", SC: "...", ...}``) replacing
    the dimensions it names — e.g. the exact wording of the paper's appendix, which this project does not ship."""
    rubrics = dict(RUBRICS)
    if path is None:
        return rubrics
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise JudgeError(f"cannot read judge rubrics {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise JudgeError(f"judge rubrics {p} must map dimensions ({', '.join(DIMENSIONS)}) to rubric texts")
    for dim, text in data.items():
        if dim not in RUBRICS:
            raise JudgeError(f"judge rubrics {p}: unknown dimension {dim!r}; choose from {', '.join(DIMENSIONS)}")
        if not isinstance(text, str) or not text.strip():
            raise JudgeError(f"judge rubrics {p}: the rubric of {dim} must be a non-empty text")
        rubrics[dim] = (RUBRICS[dim][0], text.strip())
    return rubrics


def judge_one_order(
    judge: Judge,
    cache: JudgeCache,
    prompt: str,
    first: Story,
    second: Story,
    dimension: str,
    retries: int = 2,
    rubrics: dict[str, tuple[str, str]] | None = None,
) -> tuple[str | None, list[str], int]:
    """Run the three rounds with ``first`` as Story 1; return ('1' | '2' | 'tie' | None, replies, new calls)."""
    name, rubric = (rubrics or RUBRICS)[dimension]
    system = {
        "role": "system",
        "content": [_text("You are an expert judge of visual stories generated from text prompts.")],
    }
    messages: list[dict[str, Any]] = [system]
    replies, calls = [], 0
    for label, story in (("Story 1", first), ("Story 2", second)):
        messages.append(_story_message(label, prompt, story))
        reply, cached = cache.chat(judge, messages)
        calls += not cached
        replies.append(reply)
        messages.append({"role": "assistant", "content": [_text(reply)]})
    messages.append({"role": "user", "content": [_text(f"Dimension: {name}. {rubric} {ANSWER_FORMAT}")]})
    for attempt in range(retries + 1):
        reply, cached = cache.chat(judge, messages)
        calls += not cached
        replies.append(reply)
        answer = parse_answer(reply)
        if answer is not None:
            return answer, replies, calls
        if attempt < retries:  # a different request, so the cache does not replay the same unparseable reply
            messages = messages + [
                {"role": "assistant", "content": [_text(reply)]},
                {"role": "user", "content": [_text(f"Your answer could not be read. {ANSWER_FORMAT}")]},
            ]
    return None, replies, calls


def judge_pair(judge: Judge, cache: JudgeCache, prompt: str, a: Story, b: Story,
               dimensions: Sequence[str] = DIMENSIONS, retries: int = 2,
               rubrics: dict[str, tuple[str, str]] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Judge A against B in both orders on each dimension; one record per dimension with ``outcome`` for A:
    'win' (both orders prefer A), 'loss' (both prefer B), 'tie' (anything else) or 'unparseable'."""
    records = []
    for dim in dimensions:
        if dim not in RUBRICS:
            raise JudgeError(f"unknown judge dimension {dim!r}; choose from {', '.join(DIMENSIONS)}")
        ab, r_ab, c1 = judge_one_order(judge, cache, prompt, a, b, dim, retries, rubrics)
        ba, r_ba, c2 = judge_one_order(judge, cache, prompt, b, a, dim, retries, rubrics)
        # map each order's '1'/'2' to systems
        pref_ab = {"1": "A", "2": "B", "tie": "tie", None: None}[ab]
        pref_ba = {"1": "B", "2": "A", "tie": "tie", None: None}[ba]
        if pref_ab is None or pref_ba is None:
            outcome = "unparseable"
        elif pref_ab == pref_ba == "A":
            outcome = "win"
        elif pref_ab == pref_ba == "B":
            outcome = "loss"
        else:
            outcome = "tie"
        records.append(
            {
                "dimension": dim,
                "system_a": a.system,
                "system_b": b.system,
                "order_ab": pref_ab,
                "order_ba": pref_ba,
                "outcome": outcome,
                "calls": c1 + c2,
                "responses_ab": r_ab,
                "responses_ba": r_ba,
            }
        )
    return records


def win_tie_loss(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, int]]]:
    """Counts per (system A, system B) and dimension: {'win', 'tie', 'loss', 'unparseable'} from A's side."""
    table: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    for r in records:
        pair = table.setdefault((r["system_a"], r["system_b"]), {})
        counts = pair.setdefault(r["dimension"], {"win": 0, "tie": 0, "loss": 0, "unparseable": 0})
        counts[r["outcome"]] += 1
    return table


def win_tie_loss_markdown(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one row per system pair, one 'win/tie/loss' column per dimension."""
    table = win_tie_loss(records)
    dims = [d for d in DIMENSIONS if any(d in v for v in table.values())]
    lines = ["| A vs B | " + " | ".join(dims) + " |", "|---|" + "---|" * len(dims)]
    for (a, b), per in table.items():
        cells = []
        for d in dims:
            c = per.get(d)
            if c is None:
                cells.append("")
                continue
            cell = f"{c['win']}/{c['tie']}/{c['loss']}"
            cells.append(cell + (f" ({c['unparseable']} unparseable)" if c["unparseable"] else ""))
        lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nCells: win/tie/loss of A against B (a win needs both orders to agree).\n"
