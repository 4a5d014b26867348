"""scripts/build_typical_recipes.py: each dish's ROUGE-L medoid training video, as a CookGen build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cookgen.cli import main
from tests.cookgen.conftest import write_youcook2, yc_video

REPO = Path(__file__).resolve().parents[2]


def test_typical_recipes_keep_each_dishs_medoid_and_the_val_split(tmp_path: Path) -> None:
    salad = [(0, 5, "chop the lettuce"), (6, 9, "add the dressing"), (10, 12, "toss the salad")]
    ann = write_youcook2(
        tmp_path / "ann.json",
        {
            # three salad videos: the middle one shares most words with both others, so it is the medoid
            "s1": yc_video("training", "201", [(0, 5, "chop the lettuce"), (6, 9, "add oil")]),
            "s2": yc_video("training", "201", salad),
            "s3": yc_video("training", "201", [(0, 5, "add the dressing"), (6, 9, "toss the salad well")]),
            "f1": yc_video("training", "105", [(0, 8, "coat chicken in flour"), (9, 30, "fry the chicken")]),
            "v1": yc_video("validation", "201", [(0, 5, "wash lettuce"), (6, 9, "serve")]),
        },
    )
    labels = tmp_path / "labels.csv"
    labels.write_text("201,salad\n105,fried chicken\n")
    src, out = tmp_path / "yc", tmp_path / "typical"
    assert main(["build", "youcook2", "--annotations", str(ann), "--labels", str(labels), "--out", str(src)]) == 0
    script = REPO / "scripts" / "build_typical_recipes.py"
    run = subprocess.run([sys.executable, str(script), str(src), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    meta = json.loads((out / "cookgen.json").read_text())
    assert meta["derived"]["videos"] == {"how to make salad": "s2", "how to make fried chicken": "f1"}
    assert meta["splits"] == {"train": 5, "val": 2}  # 3 + 2 training steps kept; validation copied unchanged
    from director.data import load_episodes

    train = load_episodes(out, "train", None)
    assert sorted(len(e.steps) for e in train) == [2, 3] and len(load_episodes(out, "val", None)) == 1
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nope"), str(tmp_path / "o2")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and not (tmp_path / "o2").exists()


def test_typical_recipes_refuse_a_corrupt_build_in_one_line(tmp_path: Path) -> None:
    src = tmp_path / "broken"
    (src / "train").mkdir(parents=True)
    (src / "cookgen.json").write_text('{"format": "cookgen/1"}')
    (src / "train" / "state.json").write_text("not json")
    script = REPO / "scripts" / "build_typical_recipes.py"
    run = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: cannot read") and len(run.stderr.splitlines()) == 1
    assert not (tmp_path / "o").exists()
