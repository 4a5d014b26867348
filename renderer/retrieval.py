"""The offline default renderer: retrieve each keyframe from a frame bank (labelled as retrieval, not FLUX).

No FLUX weights exist offline, so the ``default`` preset renders a plan by retrieval. For step t with visual
state z_t (the director's prediction) it picks the bank frame j maximising

    score_j = cos(z_t, b_j) + weight * mean_{c in last k chosen} cos(b_c, b_j)

over frames not chosen before (unless ``allow_repeats``): the nearest real frame in the plan's visual space, pulled
towards the previous keyframes — VideoAuteur's rolling context (§4.2) in retrieval form.

Exactness. The exact score of a frame is :func:`exact_score`: each cosine is the correctly rounded dot product of
unit rows (``math.fsum`` of products of float32 numbers, which are exact in float64), combined in a fixed order.
The plain Python loop (:func:`retrieve_loop`) applies it to every frame. The vectorised path
(:func:`retrieve`) computes all scores with one matrix-vector product (float32, or float16 for half the memory
traffic), keeps every frame within a proven error bound ``delta`` of the best, and applies :func:`exact_score` to
those only; ties go to the lowest index in both. So both pick the same frames (tested, and checked by
``benchmarks/render_bench.py``).

Speed: the score is linear in b_j. With unit rows, score_j = b_j · v where v = q + (weight/k) Σ_c b_c, so a
keyframe is one matrix-vector product over the bank — but a float32 scan of a 100,000 x 1280 bank reads 512 MB,
which memory bandwidth alone keeps above 10 ms on 2 cores. :class:`Prefilter` reads a 20x smaller projected bank
instead: with a basis P (r x D, the top right singular vectors of the bank) and the stored projection C_j of each
row, the exact residual e_j = b_j - Pᵀ C_j gives

    b_j · v = C_j · p + e_j · v_perp + (P e_j) · p,    p = P v,  v_perp = v - Pᵀ p      (for any P and p)

so |b_j · v - C_j · p| <= ||e_j|| ||v_perp|| + ||P e_j|| ||p|| (Cauchy–Schwarz). ||e_j|| and ||P e_j|| are computed
in float64 against the *stored* C_j (float32 or float16), so the storage rounding is inside the bound; the
matrix-vector rounding is bounded by gamma_r. Every row whose upper bound reaches the best lower bound is kept,
the rest cannot be the best; the survivors go through the float32 scan, a float64 scan and :func:`exact_score`
as above. When the bound prunes little (random, structureless banks) the full scan runs instead: exact either way.

Banks (:mod:`auteur.bank`, built by ``cookgen bank``) of 10,000 frames or more get their prefilter at first load
(:func:`bank_prefilter`), stored beside the bank as ``prefilter.safetensors`` and reused while the rows are the same.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class Choice:
    """One retrieved frame: bank row ``index`` and its exact ``score``."""

    index: int
    score: float


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> unit rows [N, D] float32 (a zero row stays zero)."""
    return torch.nn.functional.normalize(x.to(torch.float32), dim=-1)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b))


def exact_score(q: Sequence[float], row: Sequence[float], prev: Sequence[Sequence[float]], weight: float) -> float:
    """cos(q, row) + weight * mean_c cos(prev_c, row) for unit vectors given as float lists, correctly rounded dots."""
    s = _dot(q, row)
    if prev and weight:
        s = s + weight * (math.fsum(_dot(p, row) for p in prev) / len(prev))
    return s


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

    def _bounds(self, level: int, v64: torch.Tensor, rows: torch.Tensor | None):
        """(approx [M], half-width [M]) with |b_j · v - approx_j| <= half-width_j for ``rows`` (None: all)."""
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
        # p rounded to float32 and the r-term float32 dot: gamma_{r+2}(u32) |C_j| |p|
        eps = _gamma(r + 2, U32) * self.cmax[level] * pn
        half = res * vperp + res_in * pn
        # the float32 arithmetic of half-width and approx +- half-width: a few u32 of their sizes, covered generously
        slack = eps + 8 * U32 * (self.cmax[level] * pn + float(half.max())) + 1e-7
        return approx, half * (1 + 4 * U32) + slack

    def candidates(self, v64: torch.Tensor, used: torch.Tensor | None, max_fraction: float = 0.25):
        """Ascending rows that may hold the best b_j · v (``v64`` [D] float64), or None when more than
        ``max_fraction`` of the bank survive level 0 (the full scan is then cheaper). Rows in ``used`` are out."""
        rows = None
        for level in range(len(self.ranks)):
            approx, half = self._bounds(level, v64, rows)
            lower = approx - half
            if rows is None and used is not None:
                lower[used] = -math.inf
            best_lower = float(lower.max()) if lower.numel() else -math.inf
            if best_lower == -math.inf:
                return torch.empty(0, dtype=torch.long)
            keep = approx + half >= best_lower  # the best row's upper bound >= its score >= best_lower
            if rows is None:
                if used is not None:
                    keep &= ~used
                rows = torch.nonzero(keep).flatten()
                if rows.numel() > max_fraction * self.n:
                    return None
            else:
                rows = rows[keep]
        return rows


class Retriever:
    """Vectorised retrieval over unit bank rows ``unit`` [N, D] (float32), optionally behind a :class:`Prefilter`.

    ``stats`` counts keyframes chosen through the prefilter (``pruned``), by the full scan after the prefilter
    gave up (``fallback``) or with no prefilter (``full``), and the prefilter's surviving rows (``survivors``).
    """

    def __init__(
        self, unit: torch.Tensor, coarse: str = "float32", prefilter: Prefilter | None = None, threads: int = 1
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
        self._lists: dict[int, list[float]] = {}
        self.stats = {"pruned": 0, "fallback": 0, "full": 0, "survivors": 0}

    def row(self, j: int) -> list[float]:
        if j not in self._lists:
            self._lists[j] = self.unit[j].tolist()
        return self._lists[j]

    def delta(self, weight: float) -> float:
        """A bound on |coarse score - exact score| (twice it separates candidates safely).

        float32: inputs exact, accumulation error <= D*u32 per unit dot. float16: rounding of the rows, the
        query vector and the output (<= 3*u16 relative to |v|*|b|) plus float32 accumulation (measured: the CPU
        kernel accumulates in float32)."""
        scale = 1.0 + abs(weight)
        per = self.dim * U32 + 2 * U32 if self.coarse == "float32" else 3 * U16 + self.dim * U32
        return 2.0 * per * scale + 1e-7

    def delta64(self, weight: float) -> float:
        """Twice a bound on |float64 score - exact_score|: gamma_D of the float64 dot (|b| <= 1, |v| <= 1+|w|),
        the float64 rounding of v, and exact_score's own few float64 roundings."""
        return 2.0 * (_gamma(self.dim + 32, U64) * 1.05 * (1.0 + abs(weight))) + 1e-14

    def choose(self, q: torch.Tensor, prev: Sequence[int], weight: float, used: torch.Tensor | None) -> Choice:
        """The best frame for unit query ``q`` [D] given previous choices ``prev`` (bank rows, last k).

        Runs on ``self.threads`` torch threads (restored after): these are memory-bound vector ops, and on the
        shared 2-core box a second OpenMP thread made them 2-20x slower (benchmarks/render_bench.py, measured).
        """
        before = torch.get_num_threads()
        if self.threads and self.threads != before:
            torch.set_num_threads(self.threads)
        try:
            return self._choose(q, prev, weight, used)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def _choose(self, q: torch.Tensor, prev: Sequence[int], weight: float, used: torch.Tensor | None) -> Choice:
        v64 = q.to(torch.float64)
        if prev and weight:
            v64 = v64 + weight * self.unit[list(prev)].to(torch.float64).mean(dim=0)
        v = v64.to(torch.float32)
        # 1. candidates: the bounded prefilter, else (or when it prunes little) the full coarse scan
        cand = self.prefilter.candidates(v64, used) if self.prefilter is not None else None
        if cand is not None:
            self.stats["pruned"] += 1
            self.stats["survivors"] += int(cand.numel())
            if cand.numel() == 0:
                raise ValueError("every frame of the bank is used; allow repeats or use a bigger bank")
            coarse = (torch.from_numpy(self._work_np.take(cand.numpy(), axis=0)) @ v.to(self.work.dtype)).float()
        else:
            self.stats["fallback" if self.prefilter is not None else "full"] += 1
            coarse = (self.work @ v.to(self.work.dtype)).to(torch.float32)
            if used is not None:
                coarse[used] = -math.inf
            cand = torch.arange(self.n)
        best = float(coarse.max())
        if best == -math.inf:
            raise ValueError("every frame of the bank is used; allow repeats or use a bigger bank")
        cand = cand[coarse >= best - self.delta(weight)]  # ascending indices
        # 2. a float64 scan of the few left, with its own bound, so exact_score runs on ~1 row
        if cand.numel() > 1:
            s64 = torch.from_numpy(self._unit_np.take(cand.numpy(), axis=0)).to(torch.float64) @ v64
            cand = cand[s64 >= float(s64.max()) - self.delta64(weight)]
        # 3. the exact score (the reference loop's function), ascending order: ties go to the lowest index
        ql = q.tolist()
        pl = [self.row(c) for c in prev]
        out = Choice(-1, -math.inf)
        for j in cand.tolist():
            s = exact_score(ql, self.row(j), pl, weight)
            if s > out.score:
                out = Choice(j, s)
        return out


def retrieve(
    queries: torch.Tensor,
    retriever: Retriever,
    context: int,
    weight: float,
    allow_repeats: bool = False,
    history: Sequence[int] = (),
) -> list[Choice]:
    """Frames for steps with visual states ``queries`` [T, D] (any scale; normalised here), in order.

    ``history``: bank rows already chosen for earlier steps (a resumed render); the last ``context`` of them form
    the rolling context, and none of them is chosen again unless ``allow_repeats``.
    """
    q = normalize_rows(queries)
    chosen = list(history)
    used = None
    if not allow_repeats:
        used = torch.zeros(retriever.n, dtype=torch.bool)
        used[chosen] = True
    out = []
    for t in range(q.shape[0]):
        c = retriever.choose(q[t], chosen[-context:] if context else [], weight, used)
        out.append(c)
        chosen.append(c.index)
        if used is not None:
            used[c.index] = True
    return out


def retrieve_loop(
    queries: torch.Tensor,
    unit: torch.Tensor,
    context: int,
    weight: float,
    allow_repeats: bool = False,
    history: Sequence[int] = (),
) -> list[Choice]:
    """The same as :func:`retrieve` with a plain Python loop over every bank frame (the reference)."""
    q = normalize_rows(queries).tolist()
    rows = unit.to(torch.float32).tolist()
    chosen = list(history)
    out = []
    for t in range(len(q)):
        prev = [rows[c] for c in (chosen[-context:] if context else [])]
        best = Choice(-1, -math.inf)
        for j, row in enumerate(rows):
            if not allow_repeats and j in chosen:
                continue
            s = exact_score(q[t], row, prev, weight)
            if s > best.score:
                best = Choice(j, s)
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
    from safetensors.torch import load_file, save_file

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
            save_file({k: v.contiguous() for k, v in pf.state().items()}, str(tmp), {"fingerprint": fingerprint})
    except OSError as e:  # a read-only bank still renders, it refits next time
        log.warning("could not store the prefilter in %s: %s", bank.folder, e)
    return pf
