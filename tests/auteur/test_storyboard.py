import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from auteur.storyboard import write_storyboard
from tests.videogen.conftest import COLOURS, SMALL_ANIMATIC, make_plan
from videogen.cli import main as videogen


@pytest.fixture
def run_dir(tmp_path):
    plan = make_plan(tmp_path / "run" / "plan")
    assert videogen(["generate", str(plan), "--no-progress", *SMALL_ANIMATIC]) == 0
    return tmp_path / "run"


def test_storyboard_has_a_row_per_step_and_only_relative_resources(run_dir):
    page = write_storyboard(run_dir, run_dir / "plan", run_info={"seed": 7})
    html = page.read_text()
    assert len(re.findall(r'<tr class="step"', html)) == 3
    for i in (1, 2, 3):
        assert f"Do step {i}." in html and f"The cook does step {i}." in html
        assert f'src="plan/keyframes/{i:03d}.png"' in html and f'src="plan/clips/step-{i:03d}.mp4"' in html
    assert '<video id="full"' in html and 'src="plan/video.mp4"' in html and 'src="plan/video.vtt"' in html
    assert html.index('id="full"') < html.index('class="step"') < html.index('id="provenance"')
    assert "animatic" in html and "&quot;seed&quot;: 7" in html
    srcs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert srcs and all(not re.match(r"[a-z]+:", s) and not s.startswith("/") for s in srcs)
    assert all((run_dir / s).is_file() for s in srcs)


def test_storyboard_renders_every_step_in_headless_chromium(run_dir, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium): screenshot test skipped")
    page = write_storyboard(run_dir, run_dir / "plan")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1100,1500", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    tops = []
    for colour in COLOURS[:3]:
        hit = np.abs(img - np.array(colour)).sum(axis=2) < 40
        assert hit.sum() > 5000, f"keyframe colour {colour} not visible in the screenshot"
        rows = np.nonzero(hit[:, 600:].any(axis=1) | hit[:, 300:600].any(axis=1))[0]
        tops.append(rows.max())
    assert tops == sorted(tops), "step rows are not shown in order"


def test_storyboard_says_where_a_retrieved_keyframe_came_from(tmp_path):
    """Under each keyframe the retrieval renderer took from a bank: "retrieved from <bank clip>", not only in JSON."""
    from auteur.plan import load_plan, save_plan

    plan_dir = make_plan(tmp_path / "run" / "plan")
    plan = load_plan(plan_dir)
    plan.steps[0].meta["render"] = {"kind": "retrieved", "bank_index": 3, "source": "Interleaved/Corn_Dog/<2>.mp4",
                                    "time": 2.0, "source_action": "Dip skewered sausages into batter."}  # fmt: skip
    plan.steps[1].meta["render"] = {"kind": "retrieved", "bank_index": 9, "source": "BLT_Sandwich/4.mp4", "time": 1}
    plan.steps[2].meta["render"] = {"kind": "rendered", "model": "flux"}
    save_plan(plan, plan_dir)
    html = write_storyboard(tmp_path / "run", plan_dir).read_text()
    rows = re.findall(r'<tr class="step".*?</tr>', html, flags=re.S)
    assert len(rows) == 3
    label = re.compile(r'<td class="kf"><img [^>]*>\s*<p class="src">retrieved from ([^<]*?) at ([0-9.]+) s')
    first, second = label.search(rows[0]), label.search(rows[1])
    assert first and first.groups() == ("Interleaved/Corn_Dog/&lt;2&gt;.mp4", "2.0")  # escaped, inside the cell
    assert "(source step: Dip skewered sausages into batter.)" in rows[0]
    assert second and second.groups() == ("BLT_Sandwich/4.mp4", "1.0") and "source step" not in rows[1]
    assert "retrieved from" not in rows[2]  # a generated keyframe says nothing of the kind
