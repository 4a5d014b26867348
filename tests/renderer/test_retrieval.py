"""Vectorised retrieval against the plain Python loop over the bank (same frames, same scores)."""

from __future__ import annotations

import pytest
import torch

from renderer.retrieval import Prefilter, Retriever, normalize_rows, retrieve, retrieve_loop


@pytest.mark.parametrize("coarse", ["float32", "float16"])
@pytest.mark.parametrize("context,weight", [(1, 0.0), (2, 0.5), (3, 2.0)])
def test_retrieval_matches_brute_force(coarse, context, weight):
    g = torch.Generator().manual_seed(context)
    bank = torch.randn(400, 24, generator=g)
    bank[7] = bank[3]  # an exact duplicate: the tie goes to the lower index in both
    unit = normalize_rows(bank)
    queries = bank[[3, 50, 51, 200, 9, 3]] + 0.3 * torch.randn(6, 24, generator=g)
    fast = retrieve(queries, Retriever(unit, coarse), context, weight)
    slow = retrieve_loop(queries, unit, context, weight)
    assert [c.index for c in fast] == [c.index for c in slow]
    assert [c.score for c in fast] == [c.score for c in slow]
    assert len({c.index for c in fast}) == 6  # no frame repeats


def test_consistency_term_changes_choice_and_repeats():
    # frame 0 matches the query best; frame 1 is almost as good and close to the previous choice (frame 2)
    unit = normalize_rows(torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    r = Retriever(unit)
    q = torch.tensor([[1.0, 0.0, 0.0]])
    assert retrieve(q, r, 1, 0.0, history=[2])[0].index == 0
    assert retrieve(q, r, 1, 1.0, history=[2])[0].index == 1
    assert [c.index for c in retrieve(q.repeat(3, 1), r, 1, 0.0, allow_repeats=True)] == [0, 0, 0]
    assert [c.index for c in retrieve(q.repeat(3, 1), r, 1, 0.0)] == [0, 1, 2]


def structured_bank(n: int, dim: int, seed: int) -> torch.Tensor:
    """Non-negative rows from a mean + 6 strong directions + small isotropic noise (like image features), unit."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(dim, generator=g)
    dirs = torch.randn(6, dim, generator=g)
    rows = mean + torch.randn(n, 6, generator=g) @ dirs * 0.3 + 0.02 * torch.randn(n, dim, generator=g)
    return normalize_rows(rows.clamp_min(0))


def test_prefilter_bound_holds_float16_storage_included():
    unit = structured_bank(2000, 48, 0)
    pf = Prefilter.fit(unit, (8, 24))
    assert pf.projs[0].dtype == torch.float32 and pf.projs[1].dtype == torch.float16
    g = torch.Generator().manual_seed(1)
    for level in (0, 1):
        for _ in range(5):
            v = torch.randn(48, generator=g, dtype=torch.float64)
            approx, half = pf._bounds(level, v, None if level == 0 else torch.arange(2000))
            err = (unit.to(torch.float64) @ v - approx.to(torch.float64)).abs()
            assert bool((err <= half.to(torch.float64)).all())
            assert float(half.mean()) < 0.2 * float(v.norm())  # and it is tight enough to prune


@pytest.mark.parametrize("context,weight", [(1, 0.5), (2, 0.5), (3, 2.0)])
def test_prefilter_matches_brute_force_structured_and_random(context, weight):
    structured = structured_bank(1500, 32, context)
    g = torch.Generator().manual_seed(10 + context)
    queries = structured[:6] + 0.05 * torch.randn(6, 32, generator=g)
    structured[9] = structured[4]  # a duplicate: ties go to the lower index
    slow = retrieve_loop(queries, structured, context, weight)
    r = Retriever(structured, prefilter=Prefilter.fit(structured, (8, 16)))
    fast = retrieve(queries, r, context, weight)
    assert [(c.index, c.score) for c in fast] == [(c.index, c.score) for c in slow]
    assert r.stats["pruned"] == 6 and r.stats["fallback"] == 0 and r.stats["survivors"] < 0.25 * 6 * 1500
    # random unit rows: no structure, the bound cannot prune, so every keyframe falls back to the full scan
    rand = normalize_rows(torch.randn(1500, 32, generator=g))
    q = torch.randn(6, 32, generator=g)
    r = Retriever(rand, prefilter=Prefilter.fit(rand, (8, 16)))
    fast = retrieve(q, r, context, weight)
    slow = retrieve_loop(q, rand, context, weight)
    assert [(c.index, c.score) for c in fast] == [(c.index, c.score) for c in slow]
    assert r.stats["fallback"] == 6 and r.stats["pruned"] == 0


def test_bank_prefilter_stored_and_refitted_when_rows_change(tiny_bank, tmp_path):
    import shutil

    from auteur.bank import load_bank
    from renderer.retrieval import PREFILTER_FILE, bank_prefilter

    folder = tmp_path / "bank"
    shutil.copytree(tiny_bank, folder)
    bank = load_bank(folder)
    assert bank_prefilter(bank) is None  # small banks scan in full
    pf = bank_prefilter(bank, min_frames=1, ranks=(4, 8))
    assert (folder / PREFILTER_FILE).is_file() and pf.ranks == [4, 8]
    again = bank_prefilter(bank, min_frames=1, ranks=(4, 8))
    assert all(torch.equal(a, b) for a, b in zip(pf.projs, again.projs))
    bank.embeddings = bank.embeddings.flip(0)  # other rows: the stored prefilter must not be used
    moved = bank_prefilter(bank, min_frames=1, ranks=(4, 8))
    assert moved.fingerprint != pf.fingerprint
    unit = normalize_rows(bank.embeddings)
    q = unit[:3] + 0.01
    fast = retrieve(q, Retriever(unit, prefilter=moved), 2, 0.5)
    assert [c.index for c in fast] == [c.index for c in retrieve_loop(q, unit, 2, 0.5)]


def write_synthetic_bank(folder, unit: torch.Tensor, space) -> None:
    """A bank folder in the auteur.bank format with SYNTHETIC rows ``unit`` [N, D] (speed/caching test data);
    every record points at one of 4 small real PNGs, since only the chosen frames are ever opened."""
    from PIL import Image
    from safetensors.torch import save_file

    from auteur.bank import BANK_FILE, BANK_FORMAT, EMB_FILE
    from auteur.io import atomic_write_json

    (folder / "frames").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 20, 200 - 40 * i)).save(folder / "frames" / f"{i}.png")
    save_file({"embeddings": unit.contiguous()}, str(folder / EMB_FILE), {"space": space.name, "dim": str(space.dim)})
    frames = [{"image": f"frames/{i % 4}.png", "source": f"synthetic/{i // 100}.mp4", "time": float(i % 100)}
              for i in range(len(unit))]  # fmt: skip
    atomic_write_json(folder / BANK_FILE, {"format": BANK_FORMAT, "space": space.to_json(), "frames": frames})


def test_render_fits_the_prefilter_of_a_big_bank_at_first_load_and_reuses_it(tmp_path):
    """≥ 10,000 frames: the first render fits and stores the prefilter, a second reuses it, new rows refit it."""
    from safetensors import safe_open

    from auteur.plan import load_plan
    from renderer.config import RenderConfig
    from renderer.render import render_plan
    from renderer.retrieval import PREFILTER_FILE, PREFILTER_MIN_FRAMES
    from tests.renderer.conftest import make_plan, tiny_space

    space = tiny_space()
    unit = structured_bank(PREFILTER_MIN_FRAMES, space.dim, 3)
    folder = tmp_path / "bank"
    write_synthetic_bank(folder, unit, space)
    g = torch.Generator().manual_seed(4)
    emb = unit[[10, 5000, 9000]] + 0.05 * torch.randn(3, space.dim, generator=g)
    plan = make_plan(tmp_path / "plan", emb, space)
    cfg = RenderConfig(backend="retrieval", context=2, width=16, height=16)
    cfg.retrieval.bank = str(folder)

    def rendered_and_fingerprint(rows):
        render_plan(cfg, plan, force=True, progress=False)
        got = [s.meta["render"]["bank_index"] for s in load_plan(plan).steps]
        assert got == [c.index for c in retrieve_loop(emb, rows, 2, cfg.retrieval.consistency)]
        with safe_open(str(folder / PREFILTER_FILE), "pt") as f:
            return f.metadata()["fingerprint"]

    assert not (folder / PREFILTER_FILE).exists()
    first = rendered_and_fingerprint(unit)
    assert first == Prefilter.fingerprint_of(normalize_rows(unit))  # fitted on the rows as the renderer reads them
    stamp = (folder / PREFILTER_FILE).stat().st_mtime_ns
    assert rendered_and_fingerprint(unit) == first
    assert (folder / PREFILTER_FILE).stat().st_mtime_ns == stamp  # reused, not refitted
    moved = unit.roll(1, 0).contiguous()  # the bank rebuilt with other rows
    write_synthetic_bank(folder, moved, space)
    assert rendered_and_fingerprint(moved) == Prefilter.fingerprint_of(normalize_rows(moved)) != first
