"""Vectorised retrieval against the plain Python loop over the bank (same frames, same scores), every term."""

from __future__ import annotations

import math

import pytest
import torch

from renderer.retrieval import Prefilter, Retriever, Weights, exact_score, normalize_rows, retrieve, retrieve_loop


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


# ------------------------------------------------------------------ the text, near-duplicate and clip-reuse terms


def text_bank(n: int, dim: int, n_texts: int, seed: int):
    """A structured bank with 5 frames a clip, each clip one source step text (unit [T, 16]); every 7th clip has
    no text; two frames are exact duplicates (ties)."""
    unit = structured_bank(n, dim, seed)
    unit[9] = unit[4]
    g = torch.Generator().manual_seed(seed + 100)
    texts = normalize_rows(torch.randn(n_texts, 16, generator=g))
    clip_of = torch.arange(n) // 5
    text_of = clip_of % n_texts
    text_of[clip_of % 7 == 3] = -1
    return unit, texts, text_of, clip_of


FULL = Weights(visual=1.0, consistency=0.5, text=1.5, diversity=1.0, threshold=0.7, clip_reuse=0.3)


@pytest.mark.parametrize("coarse", ["float32", "float16"])
@pytest.mark.parametrize("prefilter", [False, True])
@pytest.mark.parametrize("weights", [FULL, Weights(consistency=0.0, text=0.4, diversity=3.0, threshold=0.5)])
def test_all_terms_match_brute_force(coarse, prefilter, weights):
    unit, texts, text_of, clip_of = text_bank(1500, 32, 40, 1)
    g = torch.Generator().manual_seed(2)
    queries = unit[[3, 3, 700, 701, 1200, 4]] + 0.05 * torch.randn(6, 32, generator=g)
    text_q = texts[[0, 0, 5, 6, 7, 0]] + 0.3 * torch.randn(6, 16, generator=g)
    keys = ["a", "a", "b", "c", "d", "e"]  # steps 1 and 2 are the same step: they do not push each other away
    pf = Prefilter.fit(unit, (8, 16)) if prefilter else None
    r = Retriever(unit, coarse, prefilter=pf, texts=texts, text_of=text_of, clip_of=clip_of)
    fast = retrieve(queries, r, 2, weights, text_queries=text_q, keys=keys, history=[100], history_keys=["z"])
    slow = retrieve_loop(
        queries, unit, 2, weights, history=[100], history_keys=["z"], text_queries=text_q, texts=texts,
        text_of=text_of, clip_of=clip_of, keys=keys,
    )  # fmt: skip
    assert [(c.index, c.score, c.parts) for c in fast] == [(c.index, c.score, c.parts) for c in slow]
    assert all(c.parts["text"] is not None or int(text_of[c.index]) < 0 for c in fast)
    if prefilter:
        assert r.stats["pruned"] + r.stats["fallback"] == 6


def test_old_api_is_the_visual_plus_consistency_score_bit_for_bit():
    unit, texts, text_of, clip_of = text_bank(600, 24, 10, 3)
    q = unit[[1, 50, 300]] + 0.1
    plain = retrieve(q, Retriever(unit), 2, 0.5)
    # texts given but weight 0, no diversity: the same frames and scores as before the terms existed
    with_texts = Retriever(unit, texts=texts, text_of=text_of, clip_of=clip_of)
    same = retrieve(q, with_texts, 2, Weights(consistency=0.5), text_queries=texts[:3])
    assert [(c.index, c.score) for c in plain] == [(c.index, c.score) for c in same]
    assert [c.score for c in plain] == [exact_score(*args) for args in _exact_args(unit, q, plain, 2, 0.5)]


def _exact_args(unit, q, choices, k, weight):
    qs, chosen = normalize_rows(q).tolist(), []
    for t, c in enumerate(choices):
        yield qs[t], unit[c.index].tolist(), [unit[p].tolist() for p in chosen[-k:]], weight
        chosen.append(c.index)


def test_text_term_picks_the_frame_whose_step_matches():
    # frames 0 and 1 look the same (equal visual match); their source steps differ: the step text decides
    unit = normalize_rows(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    texts = torch.eye(4)[:2]  # frame 0: "bacon", frame 1: "tuna" (orthogonal unit texts)
    r = Retriever(unit, texts=texts, text_of=torch.tensor([0, 1, -1]), clip_of=torch.tensor([0, 1, 2]))
    q = torch.tensor([[1.0, 0.0, 0.0]])
    tuna = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert retrieve(q, r, 1, Weights(consistency=0.0), text_queries=tuna)[0].index == 0  # text off: lowest index
    got = retrieve(q, r, 1, Weights(consistency=0.0, text=0.5), text_queries=tuna)[0]
    assert got.index == 1 and got.parts["text"] == 1.0 and got.score == 1.5
    # a frame without a source-step text scores 0 on the text term (no NaN), recorded as None
    got = retrieve(torch.tensor([[0.0, 1.0, 0.0]]), r, 1, Weights(consistency=0.0, text=0.5), text_queries=tuna)[0]
    assert got.index == 2 and got.parts["text"] is None and got.score == 1.0


def test_diversity_and_clip_reuse_avoid_near_duplicates_unless_the_step_repeats():
    # frames 0 and 1: one clip, near-identical; frame 2: another clip, a little further from the query
    unit = normalize_rows(torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.8, 0.6]]))
    clips = torch.tensor([0, 0, 1])
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    r = Retriever(unit, clip_of=clips)
    assert [c.index for c in retrieve(q, r, 1, Weights(consistency=0.0))] == [0, 1]  # the near-duplicate
    div = Weights(consistency=0.0, diversity=1.0, threshold=0.9)
    got = retrieve(q, r, 1, div)
    assert [c.index for c in got] == [0, 2]
    assert got[1].parts["nearest_earlier"] == pytest.approx(0.8) and got[1].parts["diversity"] == 0.0
    assert [c.index for c in retrieve(q, r, 1, Weights(consistency=0.0, clip_reuse=0.5))] == [0, 2]
    # the same step twice may repeat its look
    assert [c.index for c in retrieve(q, r, 1, div, keys=["stir", "stir"])] == [0, 1]
    assert [c.index for c in retrieve(q, r, 1, div, keys=["stir", "fry"])] == [0, 2]


def test_penalised_lower_bound_keeps_the_best_when_the_linear_top_is_all_near_duplicates():
    """The 200 best frames by the linear score are near-copies of an earlier frame: the prefilter must look past
    them (rounds of _best_lower) and still agree with the loop."""
    base = structured_bank(3000, 32, 5)
    g = torch.Generator().manual_seed(6)
    base[:200] = normalize_rows(base[0] + 0.01 * torch.randn(200, 32, generator=g))
    q = base[:1] + 0.001
    w = Weights(consistency=0.0, diversity=5.0, threshold=0.8)
    r = Retriever(base, prefilter=Prefilter.fit(base, (8, 16)))
    fast = retrieve(q, r, 1, w, history=[0])
    slow = retrieve_loop(q, base, 1, w, history=[0])
    assert [(c.index, c.score) for c in fast] == [(c.index, c.score) for c in slow]
    assert fast[0].index >= 200 and fast[0].parts["diversity"] == 0.0


def test_weights_are_checked():
    for bad in (Weights(diversity=-1.0), Weights(threshold=1.0), Weights(text=math.nan), Weights(clip_reuse=-0.1)):
        with pytest.raises(ValueError):
            bad.check()
    Weights(text=2.0, diversity=1.0, threshold=0.0).check()


def strict_json(path):
    """plan.json parsed as strict JSON: NaN or Infinity fail the test."""
    import json

    def refuse(token):
        raise AssertionError(f"{path} holds {token}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_default_preset_follows_the_step_texts_and_records_the_parts(tiny_bank, tmp_path, caplog):
    """Visual states that say nothing (all the bank's mean, as a weak director's): the step texts pick the clips."""
    import json
    import logging
    import shutil

    from auteur.bank import BANK_FILE, load_bank
    from auteur.plan import load_plan
    from renderer.cli import main
    from tests.renderer.conftest import ACTIONS, make_plan

    bank = load_bank(tiny_bank)
    assert bank.has_texts
    flat = bank.embeddings.mean(0, keepdim=True).repeat(3, 1)
    plan = make_plan(tmp_path / "plan", flat, bank.space)
    argv = ["render", str(plan), "--bank", str(tiny_bank), "--size", "16x16", "--no-progress"]
    assert main(argv) == 0
    p = load_plan(plan)
    prov = p.provenance["renderer"]
    assert prov["text_term"] == "on" and prov["weights"]["text"] > 0 and prov["weights"]["diversity"] > 0
    for i, s in enumerate(p.steps):
        rec = s.meta["render"]
        assert rec["source"].endswith(f"/{i + 1}.mp4") and rec["source_action"] == ACTIONS[i]
        parts = rec["score_parts"]
        assert set(parts) == {"visual", "consistency", "text", "nearest_earlier", "diversity", "clip_reuse"}
        assert parts["text"] > 0.9 and (parts["consistency"] is None) == (i == 0)
    assert len({s.meta["render"]["source"] for s in p.steps}) == 3
    strict_json(plan / "plan.json")
    # the figures script agrees: every step on its best text match (the two dishes' step k tie), 3 distinct clips
    from scripts.retrieval_quality import bank_step_texts, measure

    m = measure(plan, bank, bank_step_texts(bank, None))
    assert m["retrieval_quality"] == 1.0 and m["quality_ceiling_distinct_clips"] == 1.0 and m["distinct_clips"] == 3
    # a bank built before step texts: it still renders, with one line saying the text term is off
    old = tmp_path / "old-bank"
    shutil.copytree(tiny_bank, old)
    meta = json.loads((old / BANK_FILE).read_text())
    for key in ("texts", "text_space"):
        meta.pop(key)
    for f in meta["frames"]:
        f.pop("text", None)
    (old / BANK_FILE).write_text(json.dumps(meta))
    assert not load_bank(old).has_texts
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["render", str(plan), "--bank", str(old), "--size", "16x16", "--no-progress", "--force"]) == 0
    notes = [r.getMessage() for r in caplog.records if "text term" in r.getMessage()]
    assert len(notes) == 1 and "off" in notes[0] and "\n" not in notes[0] and "cookgen bank" in notes[0]
    p = load_plan(plan)
    assert p.provenance["renderer"]["text_term"].startswith("off")
    assert all(s.meta["render"]["score_parts"]["text"] is None for s in p.steps)
    strict_json(plan / "plan.json")
    # the figures of an old bank come from the YAML beside its clips (its clips_root): the same texts
    old_bank = load_bank(old)
    assert bank_step_texts(old_bank, None) == {t["source"]: {k: t[k] for k in t if k != "source"} for t in bank.texts}
