"""Small source files in exactly the public formats (YouCook2 JSON, HowTo100M caption JSON and CSVs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from auteur.video import write_mp4
from cookgen.cli import main


def write_youcook2(path: Path, database: dict) -> Path:
    path.write_text(json.dumps({"database": database}))
    return path


def yc_video(subset: str, recipe: str, segments: list[tuple[float, float, str]], duration: float = 300.0) -> dict:
    return {
        "duration": duration,
        "subset": subset,
        "recipe_type": recipe,
        "video_url": "https://www.youtube.com/watch?v=xxxxxxxxxxx",
        "annotations": [{"segment": [s, e], "id": i, "sentence": t} for i, (s, e, t) in enumerate(segments)],
    }


@pytest.fixture
def small_youcook2(tmp_path: Path) -> tuple[Path, Path]:
    ann = write_youcook2(
        tmp_path / "youcookii_annotations_trainval.json",
        {
            "vidA": yc_video(
                "training", "101", [(10, 20, "spread butter on bread"), (25, 40, "add bacon"), (41, 45, "close")]
            ),
            "vidB": yc_video("training", "105", [(0, 8, "coat chicken in flour"), (9, 30, "fry the chicken")]),
            "vidC": yc_video(
                "validation", "101", [(5, 9, "toast bread"), (10, 200, "wait a long time"), (201, 205, "eat")]
            ),
        },
    )
    labels = tmp_path / "label_foodtype.csv"
    labels.write_text("101,BLT\n105,fried chicken\n")
    return ann, labels


def write_howto100m(folder: Path) -> dict[str, Path]:
    captions = {
        "cook1": {
            "start": [0.0, 6.0, 14.0],
            "end": [6.0, 14.0, 22.0],
            "text": ["hi guys", "chop the onion", "fry it"],
        },
        "cook2": {"start": [1.0, 9.5], "end": [9.5, 20.0], "text": ["whisk eggs", "pour into pan"]},
        "car1": {"start": [0.0], "end": [5.0], "text": ["change the tyre"]},
    }
    (folder / "caption.json").write_text(json.dumps(captions))
    (folder / "HowTo100M_v1.csv").write_text(
        "video_id,category_1,category_2,rank,task_id\n"
        "cook1,Food and Entertaining,Recipes,1,101\n"
        "cook2,Food and Entertaining,Recipes,2,102\n"
        "car1,Cars & Other Vehicles,Tires,1,900\n"
    )
    (folder / "refined.csv").write_text(
        "video_id,start,end,text\n"
        "cook1,6.5,13.0,Chop the onion finely.\n"
        "cook1,14.2,21.0,Fry the onion until golden.\n"
        "cook1,40.0,50.0,Serve with rice.\n"
        "cook2,1.5,9.0,Whisk the eggs in a bowl.\n"
        'cook2,10.0,19.0,"Pour the eggs into the pan, then stir."\n'
    )
    return {
        k: folder / n
        for k, n in [("captions", "caption.json"), ("categories", "HowTo100M_v1.csv"), ("actions", "refined.csv")]
    }


@pytest.fixture
def small_howto100m(tmp_path: Path) -> dict[str, Path]:
    return write_howto100m(tmp_path)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the cookgen CLI in-process; returns (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def synthetic_video(path: Path, seconds: float = 20.0, fps: int = 6, size: int = 64) -> Path:
    """A video whose frame i is a solid grey of level 10 + (2*i mod 240) (so the frame at a time is known)."""
    frames = (np.full((size, size, 3), 10 + (2 * i) % 240, np.uint8) for i in range(int(seconds * fps)))
    return write_mp4(frames, path, fps=fps)


def youcook2_with_video(tmp_path: Path) -> list[str]:
    """A 20 s synthetic video "vidA" with two annotated steps ([2, 6] and [10, 18]); returns the build args."""
    vids = tmp_path / "videos"
    synthetic_video(vids / "vidA.mp4")
    ann = write_youcook2(
        tmp_path / "a.json", {"vidA": yc_video("training", "1", [(2, 6, "one"), (10, 18, "two")], 20.0)}
    )
    return ["build", "youcook2", "--annotations", str(ann), "--videos", str(vids), "--config", "tiny", "--no-progress"]
