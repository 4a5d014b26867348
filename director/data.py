"""Training data for the director: CookGen splits -> token sequences with labels and visual targets.

A CookGen split (``datasets.load_from_disk``; one row per step) becomes one :class:`Episode` per video: the
query ``how to make <dish>`` and the ordered steps (action, caption, embedding or None). Training samples are
windows of ``context_steps`` consecutive steps (a rolling context): the prompt, then the window's steps in
the plan format of :mod:`director.model`, then ``Done.`` when the window reaches the recipe's end. A
captions-only source (CookGen-style captions, one a line, e.g. ``captions.csv``) adds ``Caption: …`` lines
that teach the caption style.

Labels: cross-entropy on the step markers, actions, captions and ``Done.``; the prompt, the forced image
block and its ``<|vis|>`` slots carry none. Each image block's target is the step's embedding.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from auteur.builds import build_space, read_videos
from auteur.plan import VisualSpace
from director.backbone import DirectorError

PROMPT = "Recipe: {query}\n"
# the paper's optional "initial image-text pair", right after the prompt: this text, its caption, its image block
INITIAL = "Initial image:"


@dataclass
class Episode:
    """One recipe: a query and its ordered steps ``(action, caption, embedding [D] or None)``."""

    query: str
    steps: list[tuple[str, str, torch.Tensor | None]]
    source: str = ""


def prompt_text(query: str, neighbours=None) -> str:
    """The prompt a recipe starts with: ``Recipe: <query>``, then, for a retrieval-augmented director
    (:mod:`director.neighbours`), the nearest other dish's recipe line. Training and planning tokenize it alike."""
    return PROMPT.format(query=query) + (neighbours.line(query) if neighbours is not None else "")


def dish_query(dish: str) -> str:
    return f"how to make {dish.strip()}"


def load_episodes(folder: str | Path, split: str, space: VisualSpace | None) -> list[Episode]:
    """Episodes of one split of a CookGen build; embeddings must be in ``space`` (checked), else dropped
    when the build is text-only. A missing split gives an empty list."""
    folder = Path(folder)
    got = build_space(folder)
    if got is not None and space is not None:
        space.check_same(got, what=f"embeddings of {folder}")
    has_emb = got is not None
    cols = ["dish", "action", "caption"] + (["embedding"] if has_emb else [])
    episodes = []
    for rows in read_videos(folder, split, cols):
        vid = rows[0]["video_id"]
        dish = rows[0]["dish"] or vid
        steps = []
        for r in rows:
            emb = torch.from_numpy(r["embedding"]) if has_emb and r["embedding"] is not None else None
            steps.append((r["action"], r["caption"], emb))
        episodes.append(Episode(dish_query(dish), steps, source=f"{folder.name}/{vid}"))
    return episodes


def load_caption_lines(path: str | Path) -> list[str]:
    """CookGen-style captions from a CSV with a ``text`` column (e.g. videoauteur_demos/captions.csv)."""
    path = Path(path)
    if not path.is_file():
        raise DirectorError(f"captions file not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "text" not in (reader.fieldnames or []):
            raise DirectorError(f"captions file {path} has no 'text' column")
        return [r["text"].strip() for r in reader if r["text"] and r["text"].strip()]


class SequenceBuilder:
    """Turns episodes into token ids, labels and visual targets, in the director's plan format."""

    def __init__(
        self, tokenizer, image_block: list[int], order: str = "action_caption", max_tokens: int = 1024,
        neighbours=None,
    ):  # fmt: skip
        self.tok, self.block, self.order, self.max_tokens = tokenizer, image_block, order, max_tokens
        self.neighbours = neighbours  # director.neighbours.NeighbourRecipes: its line follows the query
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def step_pieces(self, k: int, action: str, caption: str) -> list[tuple[list[int], bool]]:
        """The text pieces of step ``k`` as (ids, trained?) — the same pieces the planner feeds or samples."""
        pieces = [(self.ids(f"Step {k}."), True)]
        if self.order in ("action_caption", "action"):
            pieces += [(self.ids(" " + action.strip()), True), (self.ids("\n"), True)]
        if self.order in ("action_caption", "caption") and caption.strip():
            pieces += [(self.ids("Caption:"), True), (self.ids(" " + caption.strip()), True), (self.ids("\n"), True)]
        return pieces

    def initial_pieces(self, caption: str) -> list[int]:
        """The text before the initial image's block: ``Initial image:`` and its caption, if any."""
        return self.ids(INITIAL) + (self.ids(" " + caption.strip()) if caption.strip() else []) + self.ids("\n")

    def episode_window(
        self,
        ep: Episode,
        start: int,
        length: int,
        fill: torch.Tensor | None = None,
        initial: tuple[str, torch.Tensor] | None = None,
    ) -> dict[str, object]:
        """Ids, labels and targets for steps ``start .. start+length-1`` of ``ep`` (0-based).

        A step without an embedding gets no image block, unless ``fill`` [D] is given: then it gets the block
        the planner writes after every step, its ``<|vis|>`` slots filled with ``fill`` and no visual loss
        (``supervised`` is False for it). So text-only recipes train in the format the planner reads back.
        ``initial`` (caption, z): the initial image-text pair after the prompt, given (no loss on it)."""
        ids: list[int] = list(self.ids(prompt_text(ep.query, self.neighbours)))
        targets = []
        supervised = []
        if initial is not None:
            ids += self.initial_pieces(initial[0]) + self.block + self.ids("\n")
            targets.append(initial[1])
            supervised.append(False)
        labels: list[int] = [-100] * len(ids)
        end = min(len(ep.steps), start + length)
        for k in range(start, end):
            action, caption, emb = ep.steps[k]
            for piece, trained in self.step_pieces(k + 1, action, caption):
                ids += piece
                labels += piece if trained else [-100] * len(piece)
            if emb is not None or fill is not None:
                ids += self.block + self.ids("\n")
                labels += [-100] * (len(self.block) + len(self.ids("\n")))
                targets.append(emb if emb is not None else fill)
                supervised.append(emb is not None)
        if end == len(ep.steps):
            done = self.ids("Done.") + self.ids("\n")
            ids += done
            labels += done
        if len(ids) > self.max_tokens:
            raise DirectorError(
                f"a training window of {ep.source} has {len(ids)} tokens, over data.max_tokens={self.max_tokens}; "
                "lower data.context_steps or raise data.max_tokens"
            )
        return {"input_ids": ids, "labels": labels, "targets": targets, "supervised": supervised}

    def caption_line(self, caption: str) -> dict[str, object]:
        ids = self.ids("Caption:") + self.ids(" " + caption) + self.ids("\n")
        return {"input_ids": ids, "labels": list(ids), "targets": [], "supervised": []}


def windows(episodes: list[Episode], context_steps: int, stride: int) -> list[tuple[int, int]]:
    """(episode index, first step) of every training window: strided starts, the last window ends at the end."""
    out = []
    for e, ep in enumerate(episodes):
        n = len(ep.steps)
        starts = list(range(0, max(1, n - context_steps + 1), max(1, stride)))
        if n > context_steps and starts[-1] != n - context_steps:
            starts.append(n - context_steps)
        out += [(e, s) for s in starts]
    return out


def collate(samples: list[dict[str, object]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of samples into a batch; targets (and whether each is supervised) concatenated in
    row-major order."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    targets, supervised = [], []
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[i, :n] = torch.tensor(s["input_ids"])
        labels[i, :n] = torch.tensor(s["labels"])
        mask[i, :n] = 1
        targets += s["targets"]
        supervised += s["supervised"]
    dim = targets[0].shape[0] if targets else 0
    tgt = torch.stack(targets) if targets else torch.zeros(0, dim)
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "targets": tgt,
        "supervised": torch.tensor(supervised, dtype=torch.bool),
    }


def has_visual_targets(sample: dict[str, object]) -> bool:
    """Whether a sample carries at least one ground-truth visual state (not only filled image blocks)."""
    return any(sample["supervised"])


def mean_embedding(episodes: list[Episode], dim: int) -> torch.Tensor:
    """The mean of the episodes' step embeddings (zeros [dim] when none has one): what fills the image
    blocks of text-only steps (``dataset.fill_blocks``)."""
    embs = [emb for ep in episodes for _, _, emb in ep.steps if emb is not None]
    return torch.stack(embs).mean(0) if embs else torch.zeros(dim)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a permutation fixed by (seed, epoch), so a resumed run replays it."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def grouped_order(lengths: list[int], batch_size: int, seed: int, epoch: int, megabatch: int = 32) -> list[int]:
    """An epoch order whose batches hold samples of similar length (less padding; same samples as
    :func:`epoch_order`).

    The seeded permutation of :func:`epoch_order` is cut into megabatches of ``megabatch`` batches; each is
    sorted by length (longest first) and cut into batches, and the batches are shuffled with a generator fixed
    by ``(seed, epoch)`` (a short last batch stays last, where the loop drops it) -- the same idea as
    Hugging Face's ``group_by_length``. Deterministic, so a resumed run replays it.
    """
    order = epoch_order(len(lengths), seed, epoch)
    size = max(1, batch_size) * max(1, megabatch)
    batches: list[list[int]] = []
    for m in range(0, len(order), size):
        chunk = sorted(order[m : m + size], key=lambda i: -lengths[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    random.Random(seed * 1_000_003 + epoch + 7).shuffle(full)
    rest = [i for b in batches if len(b) != batch_size for i in b]  # the short batch stays last (dropped)
    return [i for b in full for i in b] + rest
