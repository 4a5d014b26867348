from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from auteur.errors import PlanError
from auteur.plan import EMBEDDINGS_FILE, PLAN_FILE, Plan, Step, VisualSpace, load_plan, save_plan

SPACE = VisualSpace("efficientnet-lite0/imagenet/avgpool", 4)


def make_plan(n: int = 3, with_embeddings: bool = True) -> Plan:
    torch.manual_seed(0)
    steps = [Step(index=i + 1, action=f"action {i + 1}", caption=f"caption {i + 1}") for i in range(n)]
    steps[0].keyframe = "keyframes/001.png"
    steps[1].meta = {"source": "hand-edited", "score": 0.5}
    return Plan(
        query="how to cook a tuna sandwich",
        steps=steps,
        embeddings=torch.randn(n, SPACE.dim) if with_embeddings else None,
        space=SPACE if with_embeddings else None,
        provenance={"preset": "tiny", "seed": 0, "models": {"director": "tiny-random"}},
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    plan = make_plan()
    save_plan(plan, tmp_path / "p")
    back = load_plan(tmp_path / "p")
    assert back.query == plan.query and back.steps == plan.steps and back.space == SPACE
    assert torch.equal(back.embeddings, plan.embeddings)
    assert back.provenance["preset"] == "tiny" and "torch" in back.provenance["versions"]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [EMBEDDINGS_FILE, PLAN_FILE]


def test_plan_without_embeddings_round_trips(tmp_path: Path) -> None:
    save_plan(make_plan(with_embeddings=False), tmp_path)
    back = load_plan(tmp_path)
    assert back.embeddings is None and back.space is None and len(back.steps) == 3


def _edit(folder: Path, fn) -> None:
    data = json.loads((folder / PLAN_FILE).read_text())
    fn(data)
    (folder / PLAN_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.pop("query"), "missing field 'query'"),
        (lambda d: d["steps"][1].pop("action"), r"steps\[1\]: missing field 'action'"),
        (lambda d: d["steps"][0].__setitem__("index", "1"), r"steps\[0\]: field 'index' must be int"),
        (lambda d: d["steps"][0].__setitem__("index", True), r"steps\[0\]: field 'index' must be int"),
        (lambda d: d["steps"][2].__setitem__("caption", 5), "field 'caption' must be str"),
        (lambda d: d.__setitem__("steps", {}), "field 'steps' must be list"),
        (lambda d: d["steps"].pop(), "2 steps but 3 embedding rows"),
        (lambda d: d["steps"][1].__setitem__("index", 5), "numbered 1..N"),
        (lambda d: d.__setitem__("embedding_space", {"name": "open_clip/ViT-L-14/abc", "dim": 4}), "cannot be mixed"),
        (lambda d: d.__setitem__("format", "other/9"), "unsupported format"),
        (lambda d: d.__setitem__("query", "  "), "non-empty"),
    ],
)
def test_invalid_plans_name_the_problem(tmp_path: Path, edit, needle: str) -> None:
    save_plan(make_plan(), tmp_path)
    _edit(tmp_path, edit)
    with pytest.raises(PlanError, match=needle):
        load_plan(tmp_path)


def test_embedding_file_problems(tmp_path: Path) -> None:
    save_plan(make_plan(), tmp_path)
    save_file({"embeddings": torch.zeros(3, 4)}, str(tmp_path / EMBEDDINGS_FILE))  # no space metadata
    with pytest.raises(PlanError, match="does not record its visual space"):
        load_plan(tmp_path)
    (tmp_path / EMBEDDINGS_FILE).write_bytes(b"garbage")
    with pytest.raises(PlanError, match="not a readable safetensors"):
        load_plan(tmp_path)
    (tmp_path / EMBEDDINGS_FILE).unlink()
    with pytest.raises(PlanError, match="embeddings.safetensors is missing"):
        load_plan(tmp_path)
    with pytest.raises(PlanError, match="not a plan folder"):
        load_plan(tmp_path / "nowhere")
    (tmp_path / PLAN_FILE).write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plan(tmp_path)


def test_save_rejects_mismatched_dims(tmp_path: Path) -> None:
    plan = make_plan()
    plan.space = VisualSpace("x", 8)
    with pytest.raises(PlanError, match="dim 4 but visual space x has dim 8"):
        save_plan(plan, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_visual_space_mixing_is_an_error() -> None:
    SPACE.check_same(VisualSpace(SPACE.name, 4))
    with pytest.raises(PlanError, match="cannot be mixed"):
        SPACE.check_same(VisualSpace("open_clip/ViT-L-14/0123", 768))


@pytest.mark.parametrize(
    "field, value",
    [("keyframe", "../../../../etc/passwd"), ("clip", "/etc/passwd"), ("keyframe", "keyframes/../../outside.png")],
)
def test_paths_in_a_plan_must_stay_inside_its_folder(tmp_path, field, value):
    """A hand-edited or shared plan.json cannot make a stage open a file outside the plan folder."""
    folder = tmp_path / "plan"
    save_plan(Plan(query="q", steps=[Step(1, "chop")]), folder)
    data = json.loads((folder / "plan.json").read_text())
    data["steps"][0][field] = value
    (folder / "plan.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match=rf"steps\[0\].{field} .* points outside the plan folder"):
        load_plan(folder)
    data["steps"][0][field] = "keyframes/0001.png"  # inside: fine (whether it exists is the stage's concern)
    (folder / "plan.json").write_text(json.dumps(data))
    assert getattr(load_plan(folder).steps[0], field) == "keyframes/0001.png"


def test_non_finite_embeddings_are_refused(tmp_path):
    folder = tmp_path / "plan"
    emb = torch.zeros(2, 4)
    emb[1, 2] = float("nan")
    space = VisualSpace("test/space", 4)
    save_plan(Plan(query="q", steps=[Step(1, "a"), Step(2, "b")], embeddings=emb, space=space), folder)
    with pytest.raises(PlanError, match="embedding of step 2 holds NaN or infinite values"):
        load_plan(folder)
