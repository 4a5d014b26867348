"""The offline default renderer: retrieve each keyframe from a frame bank (labelled as retrieval, not FLUX).

No FLUX weights exist offline, so the ``default`` preset renders a plan by retrieval. For step t with visual
state z_t (the director's prediction) and step text s_t (its action and caption, embedded with all-MiniLM-L6-v2) it
picks the bank frame j maximising

    score_j =  w_vis  * cos(z_t, b_j)                                   visual-state match
             + w_con  * mean_{c in last k chosen} cos(b_c, b_j)         consistency (VideoAuteur's rolling context)
             + w_txt  * cos(s_t, e_j)                                   text match: e_j = the frame's source-step text
             - w_div  * max(0, max_{a in A} cos(b_a, b_j) - tau) / (1 - tau)    near-duplicate penalty
             - w_clip * [clip(j) is the clip of some a in A]            clip reuse

over frames not chosen before (unless ``allow_repeats``). A: the frames chosen for the plan's earlier steps, except
those of steps with the same action (repeated steps may repeat a look). ``Weights`` holds the w's and tau (the
preset's ``retrieval.*`` keys); with only w_vis = 1 and w_con the score is the earlier visual + consistency one,
bit for bit. A frame without a source-step text (or a bank without texts) scores 0 on the text term.

Exactness. The exact score of a frame is :func:`exact_parts`: each cosine is the correctly rounded dot product of
unit rows (``math.fsum`` of products of float32 numbers, which are exact in float64), combined in a fixed order.
The plain Python loop (:func:`retrieve_loop`) applies it to every frame. The vectorised path
(:func:`retrieve`) bounds every frame's score from coarse arithmetic (a float32 or float16 matrix-vector product, a
float32 text-score table, float32 near-duplicate cosines) with proven error bounds, keeps every frame whose upper
bound reaches the best lower bound, rescored in float64 with its own bound, and applies :func:`exact_parts` to
the last few only; ties go to the lowest index in both. So both pick the same frames with the same scores (tested,
and checked by ``benchmarks/render_bench.py``).

Speed: the visual and consistency terms are linear in b_j. With unit rows, they are b_j · v where
v = w_vis q + (w_con/k) Σ_c b_c, one matrix-vector product over the bank — but a float32 scan of a 100,000 x 1280
bank reads 512 MB, which memory bandwidth alone keeps above 10 ms on 2 cores. :class:`Prefilter` reads a 20x
smaller projected bank instead: with a basis P (r x D, the top right singular vectors of the bank) and the stored
projection C_j of each row, the exact residual e_j = b_j - Pᵀ C_j gives

    b_j · v = C_j · p + e_j · v_perp + (P e_j) · p,    p = P v,  v_perp = v - Pᵀ p      (for any P and p)

so |b_j · v - C_j · p| <= ||e_j|| ||v_perp|| + ||P e_j|| ||p|| (Cauchy–Schwarz). ||e_j|| and ||P e_j|| are computed
in float64 against the *stored* C_j (float32 or float16), so the storage rounding is inside the bound; the
matrix-vector rounding is bounded by gamma_r. The text and clip-reuse terms are per-frame constants (a table of T
text scores, one per source step, computed once for a whole plan, gathered per frame), added to both bounds with
their own rounding bound. The near-duplicate penalty is >= 0, so an upper bound without it stays an upper bound;
the best lower bound subtracts the (bounded) penalty of the few frames with the best lower bounds, in rounds while
a frame left could still raise it. Every row whose upper bound reaches the best lower bound is kept, the rest
cannot be the best; the survivors are rescored as above. When the bound prunes little (random, structureless banks)
the full scan runs instead: exact either way.

Banks (:mod:`auteur.bank`, built by ``cookgen bank``) of 10,000 frames or more get their prefilter at first load
(:func:`bank_prefilter`), stored beside the bank as ``prefilter.safetensors`` and reused while the rows are the same.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from auteur.bank import FrameBank
from auteur.io import atomic_path

log = logging.getLogger(__name__)

PREFILTER_FILE = "prefilter.safetensors"  # beside bank.json: the renderer's cache, fitted on the bank's rows
PREFILTER_MIN_FRAMES = 10_000  # smaller banks scan in full (a few ms); bigger ones pay one fit at first load

U16 = 2.0**-11  # unit roundoff of float16
U32 = 2.0**-24  # of float32
U64 = 2.0**-53  # of float64


def _gamma(n: int, u: float) -> float:
    """gamma_n = n u / (1 - n u): the bound on the relative error of an n-term float dot product, any order."""
    return n * u / (1.0 - n * u)


def _round_up32(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float32 values that are >= x (bounds stored in float32 must stay bounds)."""
    y = x.to(torch.float32)
    return torch.where(y.to(torch.float64) < x, torch.nextafter(y, torch.tensor(math.inf)), y)


@dataclass(frozen=True)
class Weights:
    """The weights of the retrieval score (see the module docstring; the preset's ``retrieval.*`` keys)."""

    visual: float = 1.0  # w_vis: cos(z_t, b_j)
    consistency: float = 0.5  # w_con: mean cos to the last k chosen frames
    text: float = 0.0  # w_txt: cos(step text, the frame's source-step text), MiniLM
    diversity: float = 0.0  # w_div: near-duplicate penalty towards the plan's earlier frames
    threshold: float = 0.9  # tau: cosines above it count as near-duplicates
    clip_reuse: float = 0.0  # w_clip: a frame from a clip an earlier step already used

    def check(self) -> None:
        for name in ("visual", "consistency", "text", "diversity", "threshold", "clip_reuse"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"retrieval weight {name} must be finite, got {getattr(self, name)}")
        if self.diversity < 0 or self.clip_reuse < 0:
            raise ValueError(f"diversity and clip_reuse must be >= 0, got {self.diversity}, {self.clip_reuse}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"the near-duplicate threshold must be in [0, 1), got {self.threshold}")

    @property
    def linear(self) -> float:
        """|w_vis| + |w_con|: the size of v (the linear part's query vector) for unit rows."""
        return abs(self.visual) + abs(self.consistency)

    @property
    def slope(self) -> float:
        """How much the near-duplicate penalty can move per unit change of a cosine: w_div / (1 - tau)."""
        return self.diversity / (1.0 - self.threshold)

    def scale(self) -> float:
        """A bound on the size of any score (its float64 roundings are relative to it)."""
        return self.linear + abs(self.text) + self.diversity + self.clip_reuse


def as_weights(weight: float | Weights) -> Weights:
    """A consistency weight alone (the earlier API) means w_vis = 1 and no other term."""
    return weight if isinstance(weight, Weights) else Weights(consistency=float(weight))


@dataclass
class Choice:
    """One retrieved frame: bank row ``index``, its exact ``score`` and the raw ``parts`` of it (see
    :func:`exact_parts`)."""

    index: int
    score: float
    parts: dict[str, float | None] | None = None


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> unit rows [N, D] float32 (a zero row stays zero)."""
    return torch.nn.functional.normalize(x.to(torch.float32), dim=-1)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b))


def exact_score(q: Sequence[float], row: Sequence[float], prev: Sequence[Sequence[float]], weight: float) -> float:
    """cos(q, row) + weight * mean_c cos(prev_c, row) for unit vectors given as float lists, correctly rounded dots."""
    return exact_parts(q, row, prev, as_weights(weight))[0]


def exact_parts(
    q: Sequence[float],
    row: Sequence[float],
    prev: Sequence[Sequence[float]],
    w: Weights,
    text_q: Sequence[float] | None = None,
    text_row: Sequence[float] | None = None,
    avoid: Sequence[Sequence[float]] = (),
    reused: bool = False,
) -> tuple[float, dict[str, float | None]]:
    """The exact score of one frame and its raw parts, for unit vectors given as float lists.

    Parts: ``visual`` cos(q, row); ``consistency`` the mean cos to ``prev`` (None without context); ``text`` cos of
    the step text ``text_q`` and the frame's source-step text ``text_row`` (None when the text term is off or the
    frame has no text: it then adds 0); ``nearest_earlier`` the largest cos to the ``avoid`` rows (None if none) and
    ``diversity`` its hinge max(0, . - tau) / (1 - tau); ``clip_reuse`` 1.0 when ``reused`` else 0.0. The score adds
    them with their weights in that order (each dot correctly rounded, so the result is a function of the inputs)."""
    parts: dict[str, float | None] = {"visual": _dot(q, row), "consistency": None, "text": None}
    s = parts["visual"] if w.visual == 1.0 else w.visual * parts["visual"]
    if prev:
        parts["consistency"] = math.fsum(_dot(p, row) for p in prev) / len(prev)
        if w.consistency:
            s = s + w.consistency * parts["consistency"]
    if text_q is not None and text_row is not None:
        parts["text"] = _dot(text_q, text_row)
        if w.text:
            s = s + w.text * parts["text"]
    parts["nearest_earlier"] = max(_dot(a, row) for a in avoid) if avoid else None
    parts["diversity"] = 0.0
    if avoid:
        parts["diversity"] = max(0.0, parts["nearest_earlier"] - w.threshold) / (1.0 - w.threshold)
    parts["clip_reuse"] = 1.0 if reused else 0.0
    if w.clip_reuse and reused:
        s = s - w.clip_reuse
    if w.diversity and parts["diversity"]:
        s = s - w.diversity * parts["diversity"]
    return s, parts


def _best_lower(lower: torch.Tensor, penalty, ids: torch.Tensor | None = None, first: int = 32, rounds: int = 4):
    """A lower bound on max_j (score_j) given ``lower`` [M] (float64, -inf for excluded rows) with
    score_j >= lower_j - penalty_j, penalty_j >= 0: the best lower bound after subtracting ``penalty(rows)`` (an
    upper bound of the penalty of bank ``rows``; ``ids[i]`` is the bank row of entry i, all rows when None) from the
    entries with the best lower bounds, in up to ``rounds`` growing batches while one left could raise it."""
    if penalty is None:
        return float(lower.max()) if lower.numel() else -math.inf
    best, done, size = -math.inf, 0, first
    for _ in range(rounds):
        vals, idx = lower.topk(min(size, lower.numel()))  # sorted, descending; the first `done` were seen
        new = (vals[done:] > best) & (vals[done:] > -math.inf)
        idx = idx[done:][new]
        if idx.numel():
            rows = idx if ids is None else ids[idx]
            best = max(best, float((lower[idx] - penalty(rows)).max()))
        done = vals.numel()
        # every entry not yet seen has lower <= vals[-1]: it cannot raise the bound once vals[-1] <= best
        if done == lower.numel() or float(vals[-1]) <= best:
            break
        size *= 4
    return best


class Prefilter:
    """An exact reduced-dimension prefilter for bank scores b_j · v, in levels (see the module docstring).

    ``basis`` [R, D] float32: the top-R right singular vectors of the bank. Level l uses its first ``ranks[l]``
    rows: ``projs[l]`` [N, r_l] holds the stored C_j = P_l b_j (level 0 float32, scanned in full; later levels
    float16, gathered only for the rows the previous level kept, and multiplied in float32 so their bound stays
    tight), ``resids[l]`` [N] >= ||b_j - P_lᵀ C_j|| and ``resids_in[l]`` [N] >= ||P_l (b_j - P_lᵀ C_j)||
    (float32, rounded up), ``cmax[l]`` >= max_j ||C_j||. ``fingerprint`` names the bank rows it was fitted on.
    """

    def __init__(self, basis, ranks, projs, resids, resids_in, cmax, fingerprint: str = ""):
        self.basis = basis.to(torch.float32).contiguous()
        self.basis64 = self.basis.to(torch.float64)
        self.ranks = [int(r) for r in ranks]
        self.projs = [c.contiguous() for c in projs]
        self._np = [c.numpy() for c in self.projs]  # numpy's row gather is ~3x torch's on CPU (measured)
        self.resids = [r.to(torch.float32).contiguous() for r in resids]
        self.resids_in = [r.to(torch.float32).contiguous() for r in resids_in]
        self.cmax = [float(c) for c in cmax]
        self.fingerprint = fingerprint
        self.n = self.projs[0].shape[0]

    @staticmethod
    def fingerprint_of(unit: torch.Tensor) -> str:
        """A hash of the unit bank rows [N, D] (a prefilter is valid only for the rows it was fitted on)."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        h.update(str(tuple(unit.shape)).encode())
        h.update(unit.to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    @classmethod
    def fit(cls, unit: torch.Tensor, ranks: Sequence[int] = (64, 256), chunk: int = 8192) -> Prefilter:
        """Fit on unit rows ``unit`` [N, D]: P = top eigenvectors of BᵀB (uncentred PCA, so the large mean direction
        of non-negative features is in P), C = B P_lᵀ per level, residual norms in float64 against the stored C."""
        unit = unit.to(torch.float32)
        n, d = unit.shape
        ranks = sorted({max(1, min(int(r), d)) for r in ranks})
        gram = torch.zeros(d, d, dtype=torch.float64)
        for i in range(0, n, chunk):  # float32 is enough here: the bound holds for ANY basis, only its tightness
            x = unit[i : i + chunk]  # depends on P; the residuals below are float64
            gram += (x.T @ x).to(torch.float64)
        _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
        basis = vecs[:, -ranks[-1] :].flip(1).T.contiguous().to(torch.float32)
        projs, resids, resids_in, cmax = [], [], [], []
        for level, r in enumerate(ranks):
            p64 = basis[:r].to(torch.float64)
            store = torch.float32 if level == 0 else torch.float16
            proj = torch.empty(n, r, dtype=store)
            res = torch.empty(n, dtype=torch.float64)
            res_in = torch.empty(n, dtype=torch.float64)
            for i in range(0, n, chunk):
                x = unit[i : i + chunk].to(torch.float64)
                c = (x @ p64.T).to(store)
                proj[i : i + chunk] = c
                e = x - c.to(torch.float64) @ p64  # the residual against the STORED projection (rounding included)
                # + 1e-9: the float64 arithmetic of e and its norms (errors ~1e-14) stays inside the stored bound
                res[i : i + chunk] = e.norm(dim=1) + 1e-9
                res_in[i : i + chunk] = (e @ p64.T).norm(dim=1) + 1e-9
            projs.append(proj)
            resids.append(_round_up32(res))
            resids_in.append(_round_up32(res_in))
            cmax.append(float(proj.to(torch.float64).norm(dim=1).max()) * (1 + 1e-9) + 1e-9)
        return cls(basis, ranks, projs, resids, resids_in, cmax, cls.fingerprint_of(unit))

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors to store beside the bank (``from_state`` reads them back)."""
        out = {"basis": self.basis, "ranks": torch.tensor(self.ranks), "cmax": torch.tensor(self.cmax)}
        for level in range(len(self.ranks)):
            out[f"proj{level}"] = self.projs[level]
            out[f"resid{level}"] = self.resids[level]
            out[f"resid_in{level}"] = self.resids_in[level]
        return out

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], fingerprint: str = "") -> Prefilter:
        levels = range(len(state["ranks"]))
        return cls(
            state["basis"],
            state["ranks"].tolist(),
            [state[f"proj{i}"] for i in levels],
            [state[f"resid{i}"] for i in levels],
            [state[f"resid_in{i}"] for i in levels],
            state["cmax"].to(torch.float64).tolist(),
            fingerprint,
        )

    def _bounds(self, level: int, v64: torch.Tensor, rows: torch.Tensor | None, extra=None, extra_err: float = 0.0):
        """(approx [M], half-width [M]) with |b_j · v + extra_j - approx_j| <= half-width_j for ``rows`` (None: all);
        ``extra`` [N] float32 (None: 0) is within ``extra_err`` of its exact values, float32 additions included."""
        r = self.ranks[level]
        p64 = self.basis64[:r] @ v64
        vperp = float((v64 - self.basis64[:r].T @ p64).norm()) * (1 + 1e-12) + 1e-12
        pn = float(p64.norm()) * (1 + 1e-12) + 1e-12
        p = p64.to(torch.float32)
        if rows is None:
            c, res, res_in = self.projs[level], self.resids[level], self.resids_in[level]
        else:
            idx = rows.numpy()
            c = torch.from_numpy(self._np[level].take(idx, axis=0)).to(torch.float32)  # float16 -> float32: exact
            res, res_in = self.resids[level][rows], self.resids_in[level][rows]
        approx = c @ p
        if extra is not None:
            approx.add_(extra if rows is None else extra.index_select(0, rows))
        half = res * vperp + res_in * pn
        # p rounded to float32 and the r-term float32 dot: gamma_{r+2}(u32) |C_j| |p|
        eps = _gamma(r + 2, U32) * self.cmax[level] * pn
        # the float32 arithmetic of half-width and approx +- half-width: a few u32 of their sizes, covered generously
        slack = eps + 8 * U32 * (self.cmax[level] * pn + float(half.max())) + 1e-7 + extra_err
        return approx, half * (1 + 4 * U32) + slack

    def candidates(
        self,
        v64: torch.Tensor,
        used: torch.Tensor | None,
        max_fraction: float = 0.25,
        extra: torch.Tensor | None = None,
        extra_err: float = 0.0,
        penalty=None,
    ):
        """Ascending rows that may hold the best score b_j · v + extra_j - penalty_j, or None when more than
        ``max_fraction`` of the bank survive level 0 (the full scan is then cheaper). ``v64`` [D] float64;
        ``extra`` [N] float32, known to within ``extra_err`` (which also covers float32 additions of scores);
        ``penalty(rows)`` an upper bound of a penalty >= 0. Rows in ``used`` are out."""
        rows = None
        best_lower = -math.inf
        for level in range(len(self.ranks)):
            approx, half = self._bounds(level, v64, rows, extra, extra_err)
            lower = approx - half
            if rows is None and used is not None:
                lower[used] = -math.inf
            # any lower bound of the best score holds at every level: keep the largest
            best_lower = max(best_lower, _best_lower(lower, penalty, rows))
            if best_lower == -math.inf:
                return torch.empty(0, dtype=torch.long)
            keep = approx + half >= best_lower  # the best row's upper bound >= its score >= best_lower
            if rows is None:
                if used is not None:
                    keep &= ~used
                rows = torch.from_numpy(np.flatnonzero(keep.numpy()))  # ~10x torch.nonzero's speed (measured)
                if rows.numel() > max_fraction * self.n:
                    return None
            else:
                rows = rows[keep]
        return rows


class Retriever:
    """Vectorised retrieval over unit bank rows ``unit`` [N, D] (float32), optionally behind a :class:`Prefilter`.

    ``texts`` [T, E]: unit embeddings of the bank's source-step texts, ``text_of`` [N] each frame's text (-1: none);
    ``clip_of`` [N]: each frame's source clip as a number (the clip-reuse term). ``stats`` counts keyframes chosen
    through the prefilter (``pruned``), by the full scan after the prefilter gave up (``fallback``) or with no
    prefilter (``full``), and the prefilter's surviving rows (``survivors``).
    """

    def __init__(
        self,
        unit: torch.Tensor,
        coarse: str = "float32",
        prefilter: Prefilter | None = None,
        threads: int = 1,
        texts: torch.Tensor | None = None,
        text_of: torch.Tensor | None = None,
        clip_of: torch.Tensor | None = None,
    ):
        self.threads = threads
        self.unit = unit.to(torch.float32).contiguous()
        self.n, self.dim = self.unit.shape
        self.coarse = coarse
        self.work = self.unit.half() if coarse == "float16" else self.unit
        self._work_np = self.work.numpy()  # numpy's row gather is ~3x torch's on CPU (measured)
        self._unit_np = self.unit.numpy()
        self.prefilter = prefilter
        if prefilter is not None and prefilter.n != self.n:
            raise ValueError(f"prefilter holds {prefilter.n} rows, the bank {self.n}")
        self.texts = None if texts is None else texts.to(torch.float32).contiguous()
        if self.texts is not None:
            text_of = torch.full((self.n,), -1, dtype=torch.long) if text_of is None else text_of.to(torch.long)
            if text_of.shape != (self.n,) or (self.n and int(text_of.max()) >= len(self.texts)):
                raise ValueError(f"text_of must give each of the {self.n} frames a text in 0..{len(self.texts) - 1}")
            # frames without a text read the appended 0 of the score table
            self._text_slot = torch.where(text_of < 0, len(self.texts), text_of).contiguous()
            self.text_of = text_of
        self.clip_of = None if clip_of is None else clip_of.to(torch.long).contiguous()
        if self.clip_of is not None and (self.clip_of.shape != (self.n,) or (self.n and int(self.clip_of.min()) < 0)):
            raise ValueError(f"clip_of must give each of the {self.n} frames a clip number >= 0")
        if self.clip_of is not None:  # the rows of each clip, CSR: one stable sort here, then a slice per clip
            self._clip_order = torch.argsort(self.clip_of, stable=True)
            counts = torch.bincount(self.clip_of.clamp_min(0)) if self.n else torch.zeros(0, dtype=torch.long)
            self._clip_start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).tolist()
        self._lists: dict[int, list[float]] = {}
        self._text_lists: dict[int, list[float]] = {}
        self.stats = {"pruned": 0, "fallback": 0, "full": 0, "survivors": 0}

    def row(self, j: int) -> list[float]:
        if j not in self._lists:
            self._lists[j] = self.unit[j].tolist()
        return self._lists[j]

    def text_row(self, j: int) -> list[float] | None:
        """Frame ``j``'s source-step text embedding as a float list, or None."""
        t = int(self.text_of[j])
        if t < 0:
            return None
        if t not in self._text_lists:
            self._text_lists[t] = self.texts[t].tolist()
        return self._text_lists[t]

    def clip_rows(self, clip: int) -> torch.Tensor:
        """The bank rows of source clip ``clip`` (a number >= 0, as ``clip_of`` gives)."""
        c = int(clip)
        if not 0 <= c < len(self._clip_start) - 1:
            return torch.empty(0, dtype=torch.long)
        return self._clip_order[self._clip_start[c] : self._clip_start[c + 1]]

    def text_scores(self, text_queries: torch.Tensor) -> torch.Tensor:
        """[S, E] unit step-text embeddings -> [S, T + 1] float32 cosines with every bank text (then a 0 for frames
        without one): one product for a whole plan, each entry within gamma_E of the exact cosine."""
        before = torch.get_num_threads()
        if self.threads and self.threads != before:
            torch.set_num_threads(self.threads)
        try:
            scores = text_queries.to(torch.float32) @ self.texts.T
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        return torch.cat([scores, torch.zeros(len(scores), 1)], dim=1)

    def _lin_err(self, w: Weights, dtype: str) -> float:
        """A bound on |coarse b_j · v - b_j · v| (v the float64 linear query) for unit rows.

        float32: inputs exact, accumulation error <= D*u32 per unit dot, plus the rounding of v. float16: rounding
        of the rows, the query vector and the output (<= 3*u16 relative to |v|*|b|) plus float32 accumulation
        (measured: the CPU kernel accumulates in float32)."""
        per = self.dim * U32 + 2 * U32 if dtype == "float32" else 3 * U16 + self.dim * U32
        return per * w.linear

    def _text_err(self, w: Weights) -> float:
        """A bound on |w_txt * (float32 text score) - w_txt * cos| (unit float32 rows, E-term float32 dots)."""
        if self.texts is None or not w.text:
            return 0.0
        return abs(w.text) * 1.01 * (_gamma(self.texts.shape[1] + 2, U32)) + 1e-12

    def _pen_err(self, w: Weights) -> float:
        """A bound on the error of the near-duplicate penalty from float32 cosines (the hinge is 1-Lipschitz)."""
        return w.slope * (self.dim * U32 + 4 * U32) + 1e-9 if w.diversity else 0.0

    def delta(self, weight: float | Weights) -> float:
        """Twice a bound on |coarse score - exact score| for the full-scan dtype (rows filtered by it)."""
        w = as_weights(weight)
        return 2.0 * (self._lin_err(w, self.coarse) + self._text_err(w) + self._pen_err(w)) + 1e-7

    def delta64(self, weight: float | Weights) -> float:
        """Twice a bound on |float64 score - exact score|: gamma_D of the float64 dots (|b| <= 1, |v| <= the
        linear weights), the float64 rounding of v, the text and penalty dots, and the exact score's own few
        float64 roundings."""
        w = as_weights(weight)
        g = _gamma(self.dim + 32, U64) * 1.05
        text = abs(w.text) * _gamma((self.texts.shape[1] if self.texts is not None else 0) + 32, U64) * 1.05
        return 2.0 * (g * w.linear + text + g * w.slope) + 16 * U64 * w.scale() + 1e-14

    def choose(
        self,
        q: torch.Tensor,
        prev: Sequence[int],
        weight: float | Weights,
        used: torch.Tensor | None,
        text_q: torch.Tensor | None = None,
        avoid: Sequence[int] = (),
        text_score: torch.Tensor | None = None,
    ) -> Choice:
        """The best frame for unit query ``q`` [D] given previous choices ``prev`` (bank rows, last k).

        ``weight``: the consistency weight alone (visual 1, no other term) or :class:`Weights`; ``text_q`` [E]: the
        unit step-text embedding (the text term is off without it, or for a retriever without ``texts``);
        ``avoid``: the frames of earlier steps the near-duplicate and clip-reuse terms look at; ``text_score``:
        ``text_scores(text_q)`` when already computed (for a whole plan at once).

        Runs on ``self.threads`` torch threads (restored after): these are memory-bound vector ops, and on the
        shared 2-core box a second OpenMP thread made them 2-20x slower (benchmarks/render_bench.py, measured).
        """
        w = as_weights(weight)
        before = torch.get_num_threads()
        if self.threads and self.threads != before:
            torch.set_num_threads(self.threads)
        try:
            return self._choose(q, list(prev), w, used, text_q, list(avoid), text_score)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def _penalty(self, avoid: list[int], w: Weights):
        """rows -> an upper bound of each row's near-duplicate penalty (float64), from float32 cosines."""
        a = self.unit[avoid]
        err = self._pen_err(w)

        def penalty(rows: torch.Tensor) -> torch.Tensor:
            x = torch.from_numpy(self._unit_np.take(rows.numpy(), axis=0))
            near = (x @ a.T).max(dim=1).values.to(torch.float64)
            return w.diversity * ((near - w.threshold).clamp_min(0) / (1.0 - w.threshold)) + err

        return penalty

    def _choose(self, q, prev, w: Weights, used, text_q, avoid, text_score) -> Choice:
        v64 = q.to(torch.float64) if w.visual == 1.0 else w.visual * q.to(torch.float64)
        if prev and w.consistency:
            v64 = v64 + w.consistency * self.unit[prev].to(torch.float64).mean(dim=0)
        v = v64.to(torch.float32)
        # the per-frame constants, float32 over the bank: the text term (a table gathered per frame) and clip reuse;
        # extra_err bounds their distance to the exact terms (table rounding, float32 products, and the float32
        # additions to the bounds they go into: a few u32 of the largest score)
        text_on = bool(w.text) and text_q is not None and self.texts is not None
        reused_clips = []
        if w.clip_reuse and self.clip_of is not None:
            reused_clips = sorted({int(c) for c in self.clip_of[avoid].tolist()}) if avoid else []
        extra, extra_err = None, 0.0
        if text_on:
            if text_score is None:
                text_score = self.text_scores(text_q[None])[0]
            extra = text_score.index_select(0, self._text_slot)  # ~7x faster than [] indexing here (measured)
            if w.text != 1.0:
                extra *= w.text
        if reused_clips:
            extra = torch.zeros(self.n, dtype=torch.float32) if extra is None else extra
            extra[torch.cat([self.clip_rows(c) for c in reused_clips])] -= w.clip_reuse
        if extra is not None:
            extra_err = self._text_err(w) + 8 * U32 * w.scale() + 1e-7
        penalty = self._penalty(avoid, w) if (w.diversity and avoid) else None
        # 1. candidates: the bounded prefilter, else (or when it prunes little) the full coarse scan
        cand = None
        if self.prefilter is not None:
            cand = self.prefilter.candidates(v64, used, extra=extra, extra_err=extra_err, penalty=penalty)
        if cand is not None:
            self.stats["pruned"] += 1
            self.stats["survivors"] += int(cand.numel())
        else:
            self.stats["fallback" if self.prefilter is not None else "full"] += 1
            coarse = (self.work @ v.to(self.work.dtype)).to(torch.float32)
            err = self._lin_err(w, self.coarse) + extra_err + (8 * U32 * w.scale() if extra is not None else 0.0)
            if extra is not None:
                coarse += extra
            if used is not None:
                coarse[used] = -math.inf
            best_lower = _best_lower(coarse - err, penalty)
            cand = None
            if best_lower > -math.inf:
                cand = torch.from_numpy(np.flatnonzero((coarse + err >= best_lower).numpy()))
        if cand is None or cand.numel() == 0:
            raise ValueError("every frame of the bank is used; allow repeats or use a bigger bank")
        # the per-frame constants of the candidates in float64, from the float32 table (exact in float64)
        extra64 = None
        if extra is not None:
            extra64 = torch.zeros(cand.numel(), dtype=torch.float64)
            if text_on:
                extra64 += w.text * text_score[self._text_slot[cand]].to(torch.float64)
            if reused_clips:
                hit = torch.isin(self.clip_of[cand], torch.tensor(reused_clips))
                extra64 -= w.clip_reuse * hit.to(torch.float64)
        text_err64 = self._text_err(w) + 1e-12 if extra is not None else 0.0
        # 2. float32 rescoring of the candidates (the linear part and the near-duplicate cosines in one product)
        x = torch.from_numpy(self._unit_np.take(cand.numpy(), axis=0))
        if penalty is not None:
            prod = x @ torch.cat([v[None], self.unit[avoid]]).T
            s = prod[:, 0].to(torch.float64)
            near = prod[:, 1:].max(dim=1).values.to(torch.float64)
            s -= w.diversity * ((near - w.threshold).clamp_min(0) / (1.0 - w.threshold))
        else:
            s = (x @ v).to(torch.float64)
        if extra64 is not None:
            s += extra64
        keep = s >= float(s.max()) - 2.0 * (self._lin_err(w, "float32") + text_err64 + self._pen_err(w)) - 1e-7
        cand, x = cand[keep], x[keep]
        extra64 = extra64[keep] if extra64 is not None else None
        # 3. a float64 scan of the few left, with its own bound, so the exact score runs on ~1 row
        x64 = x.to(torch.float64)
        near64 = None
        if avoid and w.diversity:
            near64 = x64 @ self.unit[avoid].to(torch.float64).T  # [M, len(avoid)]
        if cand.numel() > 1:
            s64 = x64 @ v64
            if text_on:
                t = self.texts[self.text_of[cand].clamp_min(0)].to(torch.float64) @ text_q.to(torch.float64)
                s64 += w.text * torch.where(self.text_of[cand] >= 0, t, 0.0)
            if reused_clips:
                s64 -= w.clip_reuse * torch.isin(self.clip_of[cand], torch.tensor(reused_clips)).to(torch.float64)
            if near64 is not None:
                s64 -= w.diversity * ((near64.max(dim=1).values - w.threshold).clamp_min(0) / (1.0 - w.threshold))
            keep = s64 >= float(s64.max()) - self.delta64(w)
            cand = cand[keep]
            near64 = near64[keep] if near64 is not None else None
        # 4. the exact score (the reference loop's function), ascending order: ties go to the lowest index. The
        # largest cosine to the earlier frames is exact over the rows that can be it (float64 within 2 gamma_D of
        # the float64 maximum): the same maximum as over all of them, with ~1 exact dot instead of len(avoid)
        ql = q.tolist()
        pl = [self.row(c) for c in prev]
        tq = text_q.tolist() if text_q is not None and self.texts is not None else None
        avoid_clips = set(reused_clips)
        gap = 2.0 * _gamma(self.dim + 2, U64) * 1.05 + 1e-15
        out = Choice(-1, -math.inf)
        for i, j in enumerate(cand.tolist()):
            al = []
            if near64 is not None:
                row_near = near64[i]
                top = torch.nonzero(row_near >= float(row_near.max()) - gap).flatten().tolist()
                al = [self.row(avoid[a]) for a in top]
            clip_hit = self.clip_of is not None and int(self.clip_of[j]) in avoid_clips
            tr = self.text_row(j) if tq is not None else None
            sc, parts = exact_parts(ql, self.row(j), pl, w, tq, tr, al, clip_hit)
            if sc > out.score:
                out = Choice(j, sc, parts)
        return out


def avoid_rows(chosen: Sequence[int], keys: Sequence | None, key) -> list[int]:
    """The earlier frames the near-duplicate and clip-reuse terms look at: ``chosen`` (bank rows of earlier
    steps) except those of steps whose key (``keys[i]``, e.g. a normalised action) equals this step's ``key``."""
    if keys is None or key is None:
        return list(chosen)
    return [c for c, k in zip(chosen, keys) if k != key]


def retrieve(
    queries: torch.Tensor,
    retriever: Retriever,
    context: int,
    weight: float | Weights,
    allow_repeats: bool = False,
    history: Sequence[int] = (),
    text_queries: torch.Tensor | None = None,
    keys: Sequence | None = None,
    history_keys: Sequence | None = None,
) -> list[Choice]:
    """Frames for steps with visual states ``queries`` [T, D] (any scale; normalised here), in order.

    ``history``: bank rows already chosen for earlier steps (a resumed render); the last ``context`` of them form
    the rolling context, none of them is chosen again unless ``allow_repeats``, and they count as earlier frames
    for the diversity terms. ``text_queries`` [T, E]: the steps' text embeddings (normalised here); ``keys`` (and
    ``history_keys``): one per step; steps with equal keys are "the same step" and do not push each other away
    (None: all steps differ).
    """
    w = as_weights(weight)
    q = normalize_rows(queries)
    tq = normalize_rows(text_queries) if text_queries is not None and retriever.texts is not None else None
    table = retriever.text_scores(tq) if tq is not None and w.text else None
    chosen = list(history)
    all_keys = None
    if keys is not None:
        all_keys = list(history_keys) if history_keys is not None else [object() for _ in history]
        all_keys += list(keys)
    used = None
    if not allow_repeats:
        used = torch.zeros(retriever.n, dtype=torch.bool)
        used[chosen] = True
    out = []
    for t in range(q.shape[0]):
        key = all_keys[len(chosen)] if all_keys is not None else None
        avoid = avoid_rows(chosen, all_keys, key) if (w.diversity or w.clip_reuse) else []
        c = retriever.choose(
            q[t],
            chosen[-context:] if context else [],
            w,
            used,
            None if tq is None else tq[t],
            avoid,
            None if table is None else table[t],
        )
        out.append(c)
        chosen.append(c.index)
        if used is not None:
            used[c.index] = True
    return out


def retrieve_loop(
    queries: torch.Tensor,
    unit: torch.Tensor,
    context: int,
    weight: float | Weights,
    allow_repeats: bool = False,
    history: Sequence[int] = (),
    text_queries: torch.Tensor | None = None,
    texts: torch.Tensor | None = None,
    text_of: torch.Tensor | None = None,
    clip_of: torch.Tensor | None = None,
    keys: Sequence | None = None,
    history_keys: Sequence | None = None,
) -> list[Choice]:
    """The same as :func:`retrieve` with a plain Python loop over every bank frame (the reference): ``texts``,
    ``text_of`` and ``clip_of`` are what :class:`Retriever` takes."""
    w = as_weights(weight)
    q = normalize_rows(queries).tolist()
    rows = unit.to(torch.float32).tolist()
    tq = normalize_rows(text_queries).tolist() if text_queries is not None and texts is not None else None
    trows = texts.to(torch.float32).tolist() if texts is not None else None
    tof = text_of.tolist() if text_of is not None else [-1] * len(rows)
    cof = clip_of.tolist() if clip_of is not None else None
    chosen = list(history)
    all_keys = None
    if keys is not None:
        all_keys = (list(history_keys) if history_keys is not None else [object() for _ in history]) + list(keys)
    out = []
    for t in range(len(q)):
        prev = [rows[c] for c in (chosen[-context:] if context else [])]
        key = all_keys[len(chosen)] if all_keys is not None else None
        avoid = avoid_rows(chosen, all_keys, key) if (w.diversity or w.clip_reuse) else []
        al = [rows[a] for a in avoid] if w.diversity else []
        clips = {cof[a] for a in avoid} if cof is not None and w.clip_reuse else set()
        best = Choice(-1, -math.inf)
        for j, row in enumerate(rows):
            if not allow_repeats and j in chosen:
                continue
            tr = trows[tof[j]] if (tq is not None and tof[j] >= 0) else None
            s, parts = exact_parts(
                q[t], row, prev, w, tq[t] if tq is not None else None, tr, al, cof is not None and cof[j] in clips
            )
            if s > best.score:
                best = Choice(j, s, parts)
        out.append(best)
        chosen.append(best.index)
    return out


def bank_prefilter(
    bank: FrameBank, min_frames: int = PREFILTER_MIN_FRAMES, ranks: tuple[int, ...] = (64, 256)
) -> Prefilter | None:
    """The bank's exact retrieval :class:`Prefilter`, or None for banks of fewer than ``min_frames`` frames.

    Read from ``BANK/prefilter.safetensors`` when it was fitted on exactly these rows (a content hash of the unit
    rows [N, D]), else fitted now (once: ~20-30 s for 100,000 x 1280) and stored there when the folder is
    writable. A bank rebuilt with other rows (``cookgen bank`` adding clips) gets a new fit at its next load.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from auteur.io import save_safetensors

    if len(bank.frames) < max(1, min_frames):
        return None
    unit = normalize_rows(bank.embeddings)
    fingerprint = Prefilter.fingerprint_of(unit)
    path = bank.folder / PREFILTER_FILE
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                stored = (f.metadata() or {}).get("fingerprint")
            if stored == fingerprint:
                return Prefilter.from_state(load_file(str(path)), fingerprint)
            log.info("the rows of bank %s changed since its prefilter was fitted; refitting", bank.folder)
        except (OSError, SafetensorError, KeyError):
            log.warning("ignoring unreadable %s; refitting", path)
    log.info("fitting the retrieval prefilter of bank %s (%d frames; once)", bank.folder, len(bank.frames))
    pf = Prefilter.fit(unit, ranks)
    try:
        with atomic_path(path) as tmp:
            state = {k: v.contiguous() for k, v in pf.state().items()}
            save_safetensors(state, str(tmp), {"fingerprint": fingerprint})
    except OSError as e:  # a read-only bank still renders, it refits next time
        log.warning("could not store the prefilter in %s: %s", bank.folder, e)
    return pf
