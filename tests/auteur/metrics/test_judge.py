"""The StoryAnchors judge protocol with a scripted judge (a TEST DOUBLE of the protocol, not a metric)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from PIL import Image

from auteur.judge import (
    JudgeCache,
    JudgeError,
    OpenAIJudge,
    Story,
    judge_pair,
    parse_answer,
    win_tie_loss,
    win_tie_loss_markdown,
)


class ScriptedTestJudge:
    """TEST DOUBLE: answers round 3 from a script keyed by which system is Story 1 (found from the frames).

    ``prefs[(first_system, dimension)]`` is the reply text for round 3; rounds 1-2 get a fixed description.
    It counts calls, to check the cache.
    """

    model_id = "scripted-test-judge"

    def __init__(self, prefs: dict[tuple[str, str], list[str] | str], frame_owner: dict[str, str]):
        self.prefs, self.frame_owner, self.calls = prefs, frame_owner, 0

    def chat(self, messages):
        self.calls += 1
        last = messages[-1]["content"][0]["text"]
        if not last.startswith("Dimension:") and "could not be read" not in last:
            return "A story of several frames."
        first_user = messages[1]["content"]
        url = next(c["image_url"]["url"] for c in first_user if c["type"] == "image_url")
        first = self.frame_owner[url]
        dim = next(m for m in messages if m["content"][0]["text"].startswith("Dimension:"))["content"][0]["text"]
        dim = dim.split(".")[0].removeprefix("Dimension: ")
        script = self.prefs[(first, dim)]
        if isinstance(script, list):  # successive replies (retries)
            n_retry = sum("could not be read" in m["content"][0]["text"] for m in messages if m["role"] == "user")
            return script[min(n_retry, len(script) - 1)]
        return script


@pytest.fixture
def stories(tmp_path):
    from auteur.judge import image_part

    owner = {}
    out = []
    for k, name in enumerate(("A", "B")):
        frames = []
        for i in range(2):
            p = tmp_path / f"{name}{i}.png"
            Image.fromarray(np.full((8, 8, 3), 40 * k + 10 * i, np.uint8)).save(p)
            frames.append(p)
            owner[image_part(p)["image_url"]["url"]] = name
        out.append(Story(name, frames, ["t1", "t2"]))
    return out, owner


def test_parse_answer():
    assert parse_answer("blah\nWinner: Story 1") == "1"
    assert parse_answer("winner: story2") == "2"
    assert parse_answer("Winner: Tie.") == "tie"
    assert parse_answer("I prefer the first") is None
    assert parse_answer("Winner: Story 1 ... on reflection Winner: Story 2") == "2"


def test_win_only_when_both_orders_agree(stories, tmp_path):
    (a, b), owner = stories
    prefs = {
        # NQ: both orders prefer A (A as Story 1 -> 1; B as Story 1 -> 2) -> win
        ("A", "Narrative Quality"): "Winner: Story 1",
        ("B", "Narrative Quality"): "Winner: Story 2",
        # SC: position bias (always Story 1) -> tie
        ("A", "Subject Consistency"): "Winner: Story 1",
        ("B", "Subject Consistency"): "Winner: Story 1",
        # PFA: both prefer B -> loss
        ("A", "Prompt-Frame Alignment"): "Winner: Story 2",
        ("B", "Prompt-Frame Alignment"): "Winner: Story 1",
        # ShotD: one order tie -> tie
        ("A", "Shot Diversity"): "Winner: Tie",
        ("B", "Shot Diversity"): "Winner: Story 2",
        # SceneD: unparseable in one order even after retries -> unparseable
        ("A", "Scene Diversity"): ["no idea", "still no idea", "nope"],
        ("B", "Scene Diversity"): "Winner: Story 2",
    }
    judge = ScriptedTestJudge(prefs, owner)
    cache = JudgeCache(tmp_path / "cache")
    recs = judge_pair(judge, cache, "make tea", a, b, retries=2)
    outcomes = {r["dimension"]: r["outcome"] for r in recs}
    assert outcomes == {"NQ": "win", "SC": "tie", "PFA": "loss", "ShotD": "tie", "SceneD": "unparseable"}
    table = win_tie_loss(recs)[("A", "B")]
    assert table["NQ"] == {"win": 1, "tie": 0, "loss": 0, "unparseable": 0}
    assert table["SceneD"]["unparseable"] == 1
    md = win_tie_loss_markdown(recs)
    assert "| A vs B |" in md and "1/0/0" in md and "0/0/1" in md
    # the cache: a rerun costs no judge calls and gives the same outcomes
    calls = judge.calls
    recs2 = judge_pair(judge, JudgeCache(tmp_path / "cache"), "make tea", a, b, retries=2)
    assert judge.calls == calls
    assert [r["outcome"] for r in recs2] == [r["outcome"] for r in recs]
    assert all(r["calls"] == 0 for r in recs2)


def test_retry_recovers_an_answer(stories, tmp_path):
    (a, b), owner = stories
    prefs = {("A", "Narrative Quality"): ["hmm", "Winner: Story 1"], ("B", "Narrative Quality"): "Winner: Story 2"}
    recs = judge_pair(ScriptedTestJudge(prefs, owner), JudgeCache(tmp_path / "c"), "p", a, b, ["NQ"], retries=1)
    assert recs[0]["outcome"] == "win" and recs[0]["responses_ab"][-1] == "Winner: Story 1"
    with pytest.raises(JudgeError):
        judge_pair(ScriptedTestJudge(prefs, owner), JudgeCache(tmp_path / "c"), "p", a, b, ["XX"])


def test_openai_judge_speaks_the_chat_completions_protocol(monkeypatch):
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen["path"] = self.path
            seen["auth"] = self.headers.get("Authorization")
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            data = json.dumps({"choices": [{"message": {"content": "Winner: Tie"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AUTEUR_JUDGE_URL", f"http://127.0.0.1:{srv.server_port}/v1")
        monkeypatch.setenv("AUTEUR_JUDGE_MODEL", "some-vlm")
        monkeypatch.setenv("AUTEUR_JUDGE_API_KEY", "k123")
        reply = OpenAIJudge().chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    finally:
        srv.shutdown()
    assert reply == "Winner: Tie"
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer k123"
    assert seen["body"]["model"] == "some-vlm" and seen["body"]["temperature"] == 0
    monkeypatch.delenv("AUTEUR_JUDGE_URL")
    with pytest.raises(JudgeError, match="AUTEUR_JUDGE_URL"):
        OpenAIJudge()


def test_rubrics_file_replaces_the_shipped_texts(stories, tmp_path):
    from auteur.judge import RUBRICS, load_rubrics

    (a, b), owner = stories
    path = tmp_path / "rubrics.yaml"
    path.write_text("NQ: Which story has the better plot, exactly as the appendix says?\n")
    rubrics = load_rubrics(path)
    assert rubrics["NQ"] == ("Narrative Quality", "Which story has the better plot, exactly as the appendix says?")
    assert rubrics["SC"] == RUBRICS["SC"]  # dimensions the file does not name keep the shipped text

    class Recorder(ScriptedTestJudge):
        def chat(self, messages):
            self.seen = messages[-1]["content"][0]["text"]
            return super().chat(messages)

    judge = Recorder({("A", "Narrative Quality"): "Winner: Story 1", ("B", "Narrative Quality"): "Winner: Story 2"},
                     owner)  # fmt: skip
    recs = judge_pair(judge, JudgeCache(tmp_path / "c"), "p", a, b, ["NQ"], rubrics=rubrics)
    assert recs[0]["outcome"] == "win" and "exactly as the appendix says" in judge.seen
    for bad in ("XX: text\n", "NQ: ''\n", "- a list\n"):
        path.write_text(bad)
        with pytest.raises(JudgeError):
            load_rubrics(path)
