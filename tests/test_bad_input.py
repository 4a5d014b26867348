"""Bad input to every console script, one table per CLI: each case must end in exactly one stderr line
``error: ...`` (nothing before it: no log line, no library warning, no progress bar), exit code 2, no
traceback, nothing on stdout, and the folder tree under the test's ``tmp_path`` exactly as it was (names, sizes
and mtimes of every file and folder; the inputs are made before the snapshot).

The CLIs run in-process through ``main(argv)`` (with ``capfd``: what a library writes to the file descriptor is
seen too), with the process's logging set up as the console script sets it up (INFO on stderr; pytest's own
log capture is set aside for the call), and Python warnings recorded as the interpreter would print them. The
read-only output cases run in a subprocess under a private read-only bind mount (``unshare -m``, as root).
The table in docs/bad-input.md is this file's cases, by hand (``BAD_INPUT_LOG=FILE`` appends each case's
stderr to FILE, to refresh it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shlex
import shutil
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from anchors.cli import main as anchors
from auteur.cli import main as auteur
from auteur.io import writer_lock
from cookgen.cli import main as cookgen
from director.cli import main as director
from renderer.cli import main as renderer
from tests.cookgen.conftest import write_youcook2, yc_video
from tests.renderer.conftest import clips_root, one_torch_thread, tiny_cookgen  # noqa: F401 (fixtures; autouse)
from tests.renderer.conftest import write_clips as write_step_clips
from tests.videogen.conftest import make_plan as make_keyframed_plan
from videogen.cli import main as videogen

REPO = Path(__file__).resolve().parents[1]
HUGE = 100_000  # a "huge" query or file: 100 KB


# ----------------------------------------------------------------------------------------------------------------
# the harness


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """(file type, size, mtime in ns) of ``root`` and of every file and folder under it, by relative path."""
    snap = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        snap[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return snap


@contextlib.contextmanager
def process_logging():
    """Logging as in a fresh console-script process: the root logger without pytest's capture handlers (so the
    CLI's ``setup_logging`` installs its INFO handler on stderr), restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class Inputs:
    """What one case makes under ``tmp``: files, folders, plan folders, held writer locks. ``out`` is an output
    path whose parent does not exist yet (a command that leaves created parents behind is caught)."""

    def __init__(self, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.tmp, self.request, self.locks = tmp, request, []
        self.out = str(tmp / "runs" / "out")

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def file(self, name: str, data: bytes | str) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def folder(self, name: str) -> str:
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        return str(self.tmp / name)

    def binary(self, name: str, n: int = 3000) -> str:
        """Random bytes (seeded) in place of a text file."""
        return self.file(name, bytes(random.Random(0).randrange(256) for _ in range(n)))

    def huge(self, name: str) -> str:
        """100 KB of text that is no valid anything."""
        return self.file(name, "x" * HUGE)

    def under_file(self) -> str:
        """An output path under a regular file: no folder can ever be made there."""
        return os.path.join(self.file("blocker", ""), "out")

    def lock(self, path: str) -> str:
        """Hold ``path``'s writer lock (another process writing it) while the command runs."""
        self.locks.append(path)
        return path

    def plan(self, name: str = "plan", edit: Callable[[dict], None] | None = None) -> str:
        """A copy of the session's tiny director plan (2 steps, embeddings); ``edit`` changes its plan.json."""
        src = self.request.getfixturevalue("tiny_plan")
        folder = self.tmp / name
        shutil.copytree(src, folder)
        if edit is not None:
            data = json.loads((folder / "plan.json").read_text())
            edit(data)
            (folder / "plan.json").write_text(json.dumps(data))
        return str(folder)

    def keyframed_plan(self, name: str = "plan") -> str:
        """A 3-step plan with flat-colour keyframes (videogen's test plan)."""
        return str(make_keyframed_plan(self.tmp / name))

    def nan_plan(self, name: str = "plan", value: float = float("nan")) -> str:
        """The tiny plan with a NaN (or ``value``) in step 2's embedding."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        folder = Path(self.plan(name))
        path = folder / "embeddings.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        emb = load_file(str(path))["embeddings"]
        emb[1, 0] = value
        save_file({"embeddings": emb}, str(path), metadata=meta)
        return str(folder)

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)


def _drop(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key)


def _escape(d: dict) -> None:
    d["steps"][0]["keyframe"] = "../../etc/passwd"


def _shown_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The warnings a plain ``python`` process would print (it ignores the deprecation kinds outside __main__)."""
    quiet = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    return [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, quiet)]


def assert_one_line_error(rc: int, out: str, err: str, needle: str) -> None:
    assert "Traceback" not in out + err, err
    assert rc == 2, f"exit {rc}; stderr: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and err.endswith("\n"), f"stderr: {err!r}"
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert out == "", f"stdout: {out!r}"


def check(main, make, needle: str, tmp_path: Path, request, capfd) -> None:
    """Make the case's inputs, snapshot, run ``main(argv)``, check the one-line error and the unchanged tree."""
    t = Inputs(tmp_path, request)
    argv = make(t)
    with contextlib.ExitStack() as held:
        for path in t.locks:
            held.enter_context(writer_lock(path))
        before = snapshot(tmp_path)
        capfd.readouterr()
        with process_logging(), warnings.catch_warnings(record=True) as caught:
            rc = main([str(a) for a in argv])
        after = snapshot(tmp_path)
    out, err = capfd.readouterr()
    if os.environ.get("BAD_INPUT_LOG"):
        with open(os.environ["BAD_INPUT_LOG"], "a") as f:
            f.write(f"{request.node.name}\t{rc}\t{err!r}\n")
    assert not _shown_warnings(caught), _shown_warnings(caught)
    assert_one_line_error(rc, out, err, needle)
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
                             if before.get(k) != after.get(k)}  # fmt: skip


def read_only_run(tmp_path: Path, argv: list[str], folder: Path, needle: str) -> None:
    """Run ``python -m argv`` with ``folder`` a read-only bind mount in a private mount namespace; one-line error,
    nothing changed. Skipped where ``unshare``/``mount`` are not permitted (not root, no user namespaces)."""
    d = shlex.quote(str(folder))
    mount = f"mount --bind {d} {d} && mount -o remount,ro,bind {d}"
    if shutil.which("unshare") is None:
        pytest.skip("a read-only bind mount needs unshare (util-linux), which is not installed")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"a read-only bind mount needs unshare -m and mount (as root): {probe.stderr.strip()}")
    before = snapshot(tmp_path)
    script = f"{mount} && exec {shlex.join([sys.executable, '-m', *argv])}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, needle)
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory) -> Path:
    """``director plan "toast" --preset tiny --steps 2``: a real plan folder (tiny open_clip space, dim 32)."""
    out = tmp_path_factory.mktemp("tiny-plan") / "plan"
    assert director(["plan", "toast", "--preset", "tiny", "--steps", "2", "--quiet", "--out", str(out)]) == 0
    return out


def case(case_id: str, needle: str, make: Callable[[Inputs], list]) -> pytest.param:
    return pytest.param(make, needle, id=case_id)


def train_cases() -> list:
    """The bad-input cases every trainer shares (``train --preset tiny``): data, config, run folder."""

    def train(*extra: str) -> Callable[[Inputs], list[str]]:
        return lambda t: ["train", "--preset", "tiny", "--no-progress", *[a(t) if callable(a) else a for a in extra]]

    out = ("--out", lambda t: t.out)
    build = lambda t: f"data={_build(t)}"  # noqa: E731
    return [
        case("train-no-data", "no training data: give data=COOKGEN_DIR", train(*out)),
        case(
            "train-data-missing", "training data folder not found", train(lambda t: f"data={t.path('nowhere')}", *out)
        ),
        case("train-data-empty-folder", "is not a CookGen build", train(lambda t: f"data={t.folder('empty')}", *out)),
        case(
            "train-data-binary-manifest",
            "is not a valid CookGen manifest",
            train(lambda t: f"data={_junk_build(t)}", *out),
        ),
        case("train-unknown-preset", "unknown preset 'nope'", train(build, *out, "--preset", "nope")),
        case("train-bad-override-key", "unknown config key 'foo'", train(build, *out, "foo.bar=1")),
        case("train-max-steps-0", "train.max_steps must be at least 1", train(build, *out, "train.max_steps=0")),
        case("train-out-under-a-file", "cannot write there", train(build, "--out", lambda t: t.under_file())),
    ]


# ----------------------------------------------------------------------------------------------------------------
# director

PLAN = ["plan", "--preset", "tiny"]


def _director_plan(*extra):
    return lambda t: [*PLAN, *extra, "--out", t.out]


DIRECTOR = [
    case("plan-empty-query", "the query is empty", _director_plan("")),
    case("plan-blank-query", "the query is empty", _director_plan(" \t\n ")),
    # control characters are removed from a query (test_plan_cli.py); a query of nothing else is empty
    case("plan-control-chars-only-query", "the query is empty", _director_plan("\x07\x00\x1b\x08")),
    case("plan-huge-query", f"the query is {HUGE} characters long", _director_plan("x" * HUGE)),
    case("plan-steps-0", "--steps must be at least 1", _director_plan("toast", "--steps", "0")),
    case("plan-steps-negative", "--steps must be at least 1", _director_plan("toast", "--steps", "-3")),
    case("plan-steps-10000", "--steps 10000 cannot fit", _director_plan("toast", "--steps", "10000")),
    case("plan-steps-not-a-number", "invalid int value", _director_plan("toast", "--steps", "many")),
    case("plan-temperature-negative", "--temperature must be >= 0", _director_plan("toast", "--temperature", "-1")),
    case(
        "plan-unknown-preset", "unknown preset 'nope'", lambda t: ["plan", "toast", "--preset", "nope", "--out", t.out]
    ),
    case("plan-bad-override-key", "unknown config key 'foo'", _director_plan("toast", "foo.bar=1")),
    case("plan-option-looking-query", "unrecognized arguments: -x", _director_plan("-x")),
    case("plan-unknown-option", "unrecognized arguments: --bogus", _director_plan("toast", "--bogus")),
    case(
        "plan-preset-folder-not-a-checkpoint",
        "a folder must be a director checkpoint",
        lambda t: ["plan", "toast", "--preset", t.folder("ckpt"), "--out", t.out],
    ),
    case(
        "plan-preset-binary-yaml",
        "is not valid YAML",
        lambda t: ["plan", "toast", "--preset", t.binary("preset.yaml"), "--out", t.out],
    ),
    # an empty preset YAML is not an error: a preset lists the keys that differ from the defaults, here none
    case(
        "plan-preset-wrong-shape-yaml",
        "must hold a mapping of config keys, not list",
        lambda t: ["plan", "toast", "--preset", t.file("p.yaml", "[1, 2]\n"), "--out", t.out],
    ),
    case("plan-out-under-a-file", "cannot write there", lambda t: [*PLAN, "toast", "--out", t.under_file()]),
    case("plan-out-is-a-file", "is a file, not a plan folder", lambda t: [*PLAN, "toast", "--out", t.file("f", "x")]),
    case(
        "plan-out-holds-other-files",
        "exists and is not a plan folder",
        lambda t: [*PLAN, "toast", "--out", os.path.dirname(t.file("mine/notes.txt", "keep me"))],
    ),
    case(
        "plan-out-nul-in-path",
        "a path contains a NUL character",
        lambda t: [*PLAN, "toast", "--out", t.path("a\x00b")],
    ),
    case(
        "plan-out-being-written",
        "is being written by another process",
        lambda t: [*PLAN, "toast", "--out", t.lock(t.out)],
    ),
    case(
        "plan-continue-missing-folder",
        "plan.json not found",
        lambda t: [*PLAN, "--continue", t.path("nowhere"), "--from-step", "1", "--out", t.out],
    ),
    case(
        "plan-continue-empty-folder",
        "plan.json not found",
        lambda t: [*PLAN, "--continue", t.folder("empty"), "--from-step", "1", "--out", t.out],
    ),
    case(
        "plan-continue-empty-plan-json",
        "is not valid JSON",
        lambda t: [
            *PLAN,
            "--continue",
            os.path.dirname(t.file("p/plan.json", "")),
            "--from-step",
            "1",
            "--out",
            t.out,
        ],
    ),
    case(
        "plan-continue-binary-plan-json",
        "is not valid JSON",
        lambda t: [*PLAN, "--continue", os.path.dirname(t.binary("p/plan.json")), "--from-step", "1", "--out", t.out],
    ),
    case(
        "plan-continue-huge-plan-json",
        "is not valid JSON",
        lambda t: [*PLAN, "--continue", os.path.dirname(t.huge("p/plan.json")), "--from-step", "1", "--out", t.out],
    ),
    case(
        "plan-continue-list-plan-json",
        "top level must be an object",
        lambda t: [
            *PLAN,
            "--continue",
            os.path.dirname(t.file("p/plan.json", "[1, 2]")),
            "--from-step",
            "1",
            "--out",
            t.out,
        ],  # fmt: skip
    ),
    case(
        "plan-continue-missing-field",
        "missing field 'query'",
        lambda t: [*PLAN, "--continue", t.plan(edit=_drop("query")), "--from-step", "1", "--out", t.out],
    ),
    case(
        "plan-continue-nan-embedding",
        "holds NaN or infinite values",
        lambda t: [*PLAN, "--continue", t.nan_plan(), "--from-step", "1", "--out", t.out],
    ),
    case(
        "plan-continue-path-escapes",
        "points outside the plan folder",
        lambda t: [*PLAN, "--continue", t.plan(edit=_escape), "--from-step", "1", "--out", t.out],
    ),
    case(
        "plan-continue-without-from-step",
        "--continue needs --from-step",
        lambda t: [*PLAN, "--continue", t.plan(), "--out", t.out],
    ),
    case(
        "plan-from-step-without-continue",
        "--from-step goes with --continue",
        _director_plan("toast", "--from-step", "1"),
    ),
    case(
        "plan-from-step-out-of-range",
        "--from-step must be between 0 and 2",
        lambda t: [*PLAN, "--continue", t.plan(), "--from-step", "9", "--out", t.out],
    ),
    case(
        "plan-image-missing",
        "no such image file",
        lambda t: [*PLAN, "toast", "--image", t.path("no.png"), "--out", t.out],
    ),
    case(
        "plan-image-binary",
        "not a readable image",
        lambda t: [*PLAN, "toast", "--image", t.binary("img.png"), "--out", t.out],
    ),
    case(
        "plan-image-empty",
        "not a readable image",
        lambda t: [*PLAN, "toast", "--image", t.file("e.png", ""), "--out", t.out],
    ),
    case(
        "plan-image-caption-without-image",
        "--image-caption goes with --image",
        _director_plan("toast", "--image-caption", "x"),
    ),
    case(
        "eval-annotations-missing",
        "YouCook2 annotations not found",
        lambda t: _eval("--annotations", t.path("no.json"), "--out", t.out),
    ),
    case(
        "eval-annotations-empty",
        "is not valid JSON",
        lambda t: _eval("--annotations", t.file("a.json", ""), "--out", t.out),
    ),
    case(
        "eval-annotations-binary",
        "is not UTF-8 text",
        lambda t: _eval("--annotations", t.binary("a.json"), "--out", t.out),
    ),
    case(
        "eval-annotations-huge",
        "is not valid JSON",
        lambda t: _eval("--annotations", t.huge("a.json"), "--out", t.out),
    ),
    case(
        "eval-annotations-list",
        "expected an object with a 'database' mapping",
        lambda t: _eval("--annotations", t.file("a.json", "[1, 2]"), "--out", t.out),
    ),
    case(
        "eval-annotations-wrong-shape",
        "video x is not an object",
        lambda t: _eval("--annotations", t.file("a.json", '{"database": {"x": 5}}'), "--out", t.out),
    ),
    case(
        "eval-annotations-no-videos",
        "no validation videos with annotated steps",
        lambda t: _eval("--annotations", t.file("a.json", '{"database": {}}'), "--out", t.out),
    ),
    case(
        "eval-limit-0",
        "--limit must be at least 1",
        lambda t: _eval("--annotations", _yc2(t), "--limit", "0", "--out", t.out),
    ),
    case(
        "eval-labels-binary",
        "is not a readable CSV",
        lambda t: _eval("--annotations", _yc2(t), "--labels", t.binary("l.csv"), "--out", t.out),
    ),
    case(
        "eval-out-under-a-file",
        "cannot write there",
        lambda t: _eval("--annotations", _yc2(t), "--out", t.under_file()),
    ),
    case(
        "eval-out-being-written",
        "is being written by another process",
        lambda t: _eval("--annotations", _yc2(t), "--out", t.lock(t.out)),
    ),
    case(
        "eval-tiny-has-no-checkpoint",
        "the preset has no trained director checkpoint",
        lambda t: ["eval", "--preset", "tiny", "--annotations", _yc2(t), "--out", t.out],
    ),
    case("validate-no-data", "validation needs data=COOKGEN_DIR", lambda t: ["validate", "--preset", "default"]),
    case(
        "validate-data-missing",
        "is not a CookGen build",
        lambda t: ["validate", "--preset", "default", f"data={t.path('nowhere')}"],
    ),
    case(
        "validate-data-empty-folder",
        "is not a CookGen build",
        lambda t: ["validate", "--preset", "default", f"data={t.folder('empty')}"],
    ),
    case(
        "validate-tiny-has-no-checkpoint",
        "validation needs a trained director",
        lambda t: ["validate", "--preset", "tiny", f"data={_build(t)}"],
    ),
    *train_cases(),
]


def _eval(*extra: str) -> list[str]:
    """``director eval`` with the shipped checkpoint (its checks come before the model loads)."""
    return ["eval", "--preset", "default", *extra]


def _junk_build(t: Inputs) -> str:
    """A folder whose cookgen.json is random bytes."""
    return os.path.dirname(t.binary("junk/cookgen.json"))


def _yc2(t: Inputs) -> str:
    """A valid YouCook2 annotations file of one validation video."""
    video = yc_video("validation", "101", [(0, 5, "toast the bread"), (6, 9, "butter it")])
    return str(write_youcook2(t.tmp / "yc2.json", {"vidA": video}))


@pytest.mark.parametrize(("make", "needle"), DIRECTOR)
def test_director(make, needle, tmp_path, request, capfd) -> None:
    check(director, make, needle, tmp_path, request, capfd)


def test_director_read_only_out(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    argv = ["director", "plan", "toast", "--preset", "tiny", "--out", str(folder / "p")]
    read_only_run(tmp_path, argv, folder, "Read-only file system")


# ----------------------------------------------------------------------------------------------------------------
# cookgen

YC2 = ["build", "youcook2", "--preset", "tiny", "--no-progress"]
STEPS = ["build", "steps", "--preset", "tiny", "--no-progress"]
HTM = ["build", "howto100m", "--preset", "tiny", "--no-progress"]
BANK = ["--preset", "tiny", "--no-progress", "max_side=64"]


def _ann(t: Inputs, data: str | bytes | None = None) -> str:
    """A YouCook2 annotations file: ``data`` as given, else a valid one (one training video)."""
    if data is None:
        return _yc2(t)
    return t.file("ann.json", data)


def _dish_root(t: Inputs, actions: str | bytes | None = None) -> str:
    """A steps root of one dish (real clips); ``actions`` replaces its actions.yaml."""
    root = t.tmp / "dishes"
    write_step_clips(root, n_dishes=1, steps=1)
    if actions is not None:
        t.file("dishes/Dish_0/actions.yaml", actions)
    return str(root)


def _bank(*argv: str) -> list[str]:
    """``cookgen bank CLIPS ...`` with the tiny space, small frames, no progress bar."""
    return ["bank", argv[0], *BANK, *argv[1:]]


def _clips(t: Inputs) -> str:
    return str(t.fixture("clips_root"))


def _build(t: Inputs) -> str:
    return str(t.fixture("tiny_cookgen"))


COOKGEN = [
    case(
        "youcook2-annotations-missing",
        "YouCook2 annotations not found",
        lambda t: [*YC2, "--annotations", t.path("no.json"), "--out", t.out],
    ),
    case(
        "youcook2-annotations-empty",
        "is not valid JSON",
        lambda t: [*YC2, "--annotations", _ann(t, ""), "--out", t.out],
    ),
    case(
        "youcook2-annotations-binary",
        "is not UTF-8 text",
        lambda t: [*YC2, "--annotations", t.binary("a.json"), "--out", t.out],
    ),
    case(
        "youcook2-annotations-huge",
        "is not valid JSON",
        lambda t: [*YC2, "--annotations", t.huge("a.json"), "--out", t.out],
    ),
    case(
        "youcook2-annotations-list",
        "expected an object with a 'database' mapping",
        lambda t: [*YC2, "--annotations", _ann(t, "[1, 2]"), "--out", t.out],
    ),
    case(
        "youcook2-annotations-wrong-shape",
        "YouCook2 video x: entry has no 'annotations' list",
        lambda t: [*YC2, "--annotations", _ann(t, '{"database": {"x": 5}}'), "--out", t.out],
    ),
    case(
        "youcook2-annotations-empty-database",
        "the youcook2 source holds no videos to build",
        lambda t: [*YC2, "--annotations", _ann(t, '{"database": {}}'), "--out", t.out],
    ),
    case(
        "youcook2-labels-binary",
        "labels file",
        lambda t: [*YC2, "--annotations", _ann(t), "--labels", t.binary("l.csv"), "--out", t.out],
    ),
    case(
        "youcook2-labels-empty",
        "holds no 'recipe_type,name' rows",
        lambda t: [*YC2, "--annotations", _ann(t), "--labels", t.file("l.csv", ""), "--out", t.out],
    ),
    case(
        "youcook2-videos-missing",
        "videos folder not found",
        lambda t: [*YC2, "--annotations", _ann(t), "--videos", t.path("nowhere"), "--out", t.out],
    ),
    case(
        "youcook2-unknown-preset",
        "unknown preset 'nope'",
        lambda t: ["build", "youcook2", "--preset", "nope", "--annotations", _ann(t), "--out", t.out],
    ),
    case(
        "youcook2-bad-override-key",
        "unknown config key 'foo'",
        lambda t: [*YC2, "--annotations", _ann(t), "--out", t.out, "foo.bar=1"],
    ),
    case(
        "youcook2-shard-out-of-range",
        "need 0 <= i < n",
        lambda t: [*YC2, "--annotations", _ann(t), "--shard", "3/2", "--out", t.out],
    ),
    case(
        "youcook2-shard-not-i-n",
        "--shard must look like i/n",
        lambda t: [*YC2, "--annotations", _ann(t), "--shard", "x", "--out", t.out],
    ),
    case(
        "youcook2-workers-0",
        "--workers must be at least 1",
        lambda t: [*YC2, "--annotations", _ann(t), "--workers", "0", "--out", t.out],
    ),
    case(
        "youcook2-out-under-a-file",
        "cannot write there",
        lambda t: [*YC2, "--annotations", _ann(t), "--out", t.under_file()],
    ),
    case(
        "youcook2-out-being-written",
        "is being written by another process",
        lambda t: [*YC2, "--annotations", _ann(t), "--out", t.lock(t.out)],
    ),
    case(
        "youcook2-out-nul-in-path",
        "a path contains a NUL character",
        lambda t: [*YC2, "--annotations", _ann(t), "--out", t.path("a\x00b")],
    ),
    case(
        "howto100m-captions-binary",
        "is not UTF-8 text",
        lambda t: [*HTM, "--captions", t.binary("c.json"), "--out", t.out],
    ),
    case(
        "howto100m-captions-list",
        "expected an object mapping video ids",
        lambda t: [*HTM, "--captions", t.file("c.json", "[1, 2]"), "--out", t.out],
    ),
    case(
        "howto100m-captions-wrong-shape",
        "HowTo100M video v: expected lists 'start', 'end', 'text'",
        lambda t: [*HTM, "--captions", t.file("c.json", '{"v": 5}'), "--out", t.out],
    ),
    case(
        "howto100m-categories-binary",
        "is not a readable CSV",
        lambda t: [
            *HTM,
            "--captions",
            t.file("c.json", '{"v": {"start": [0], "end": [5], "text": ["chop"]}}'),
            "--categories",
            t.binary("c.csv"),
            "--out",
            t.out,
        ],
    ),
    case(
        "steps-root-missing", "steps root not found", lambda t: [*STEPS, "--root", t.path("nowhere"), "--out", t.out]
    ),
    case("steps-root-empty", "no dish folders under", lambda t: [*STEPS, "--root", t.folder("empty"), "--out", t.out]),
    case(
        "steps-actions-binary",
        "is not valid YAML",
        lambda t: [*STEPS, "--root", _dish_root(t, bytes(range(128, 256)) * 20), "--out", t.out],
    ),
    case(
        "steps-actions-empty",
        "actions.yaml holds no steps",
        lambda t: [*STEPS, "--root", _dish_root(t, ""), "--out", t.out],
    ),
    case(
        "steps-actions-list",
        "expected a mapping of step number to text",
        lambda t: [*STEPS, "--root", _dish_root(t, "[1, 2]\n"), "--out", t.out],
    ),
    case(
        "steps-out-being-written",
        "is being written by another process",
        lambda t: [*STEPS, "--root", _dish_root(t), "--out", t.lock(t.out)],
    ),
    case("stats-missing", "not a CookGen build", lambda t: ["stats", t.path("nowhere")]),
    case("stats-empty-folder", "not a CookGen build", lambda t: ["stats", t.folder("empty")]),
    case(
        "stats-binary-manifest", "is not valid JSON", lambda t: ["stats", os.path.dirname(t.binary("b/cookgen.json"))]
    ),
    case(
        "stats-list-manifest",
        "top level must be an object",
        lambda t: ["stats", os.path.dirname(t.file("b/cookgen.json", "[1, 2]"))],
    ),
    case("merge-shard-missing", "not a CookGen build", lambda t: ["merge", t.path("nowhere"), "--out", t.out]),
    case("merge-shard-empty-folder", "not a CookGen build", lambda t: ["merge", t.folder("empty"), "--out", t.out]),
    case(
        "merge-shard-binary-manifest",
        "is not valid JSON",
        lambda t: ["merge", os.path.dirname(t.binary("b/cookgen.json")), "--out", t.out],
    ),
    case("merge-out-under-a-file", "cannot write there", lambda t: ["merge", _build(t), "--out", t.under_file()]),
    case(
        "merge-out-being-written",
        "is being written by another process",
        lambda t: ["merge", _build(t), "--out", t.lock(t.out)],
    ),
    case("bank-clips-missing", "clips folder not found", lambda t: _bank(t.path("nowhere"), "--out", t.out)),
    case("bank-clips-empty-folder", "no video clips", lambda t: _bank(t.folder("empty"), "--out", t.out)),
    # clips that no decoder reads (random bytes named a.mp4) are found only while the bank is built: each is
    # reported as it is met (a WARNING) and the run ends with one error, the --out it made removed again; not in
    # this table, whose commands fail before they start (tests/cookgen/test_bank.py covers it)
    case("bank-interval-0", "interval must be > 0", lambda t: _bank(_clips(t), "--interval", "0", "--out", t.out)),
    case(
        "bank-interval-negative",
        "interval must be > 0",
        lambda t: _bank(_clips(t), "--interval", "-1", "--out", t.out),
    ),
    case("bank-max-side-0", "max_side must be >= 1", lambda t: _bank(_clips(t), "max_side=0", "--out", t.out)),
    case(
        "bank-unknown-preset",
        "unknown preset 'nope'",
        lambda t: _bank(_clips(t), "--preset", "nope", "--out", t.out),
    ),
    case("bank-bad-override-key", "unknown config key 'foo'", lambda t: _bank(_clips(t), "foo.bar=1", "--out", t.out)),
    case("bank-out-under-a-file", "cannot write there", lambda t: _bank(_clips(t), "--out", t.under_file())),
    case("bank-out-is-a-file", "exists and is not a folder", lambda t: _bank(_clips(t), "--out", t.file("f", "x"))),
    case(
        "bank-out-being-written",
        "is being written by another process",
        lambda t: _bank(_clips(t), "--out", t.lock(t.out)),
    ),
    case(
        "bank-binary-bank-json",
        "bank.json is unreadable",
        lambda t: _bank(_clips(t), "--out", os.path.dirname(t.binary("b/bank.json"))),
    ),
]


@pytest.mark.parametrize(("make", "needle"), COOKGEN)
def test_cookgen(make, needle, tmp_path, request, capfd) -> None:
    check(cookgen, make, needle, tmp_path, request, capfd)


def test_cookgen_read_only_out(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    ann = write_youcook2(tmp_path / "yc2.json", {"v": yc_video("training", "1", [(0, 5, "toast the bread")])})
    argv = ["cookgen", "build", "youcook2", "--annotations", str(ann), "--preset", "tiny", "--no-progress",
            "--out", str(folder / "b")]  # fmt: skip
    read_only_run(tmp_path, argv, folder, "Read-only file system")


# ----------------------------------------------------------------------------------------------------------------
# renderer

RENDER = ["render", "--preset", "tiny", "--no-progress"]
RTRAIN = ["train", "--preset", "tiny", "--no-progress"]


def _nul_keyframe(d: dict) -> None:
    d["steps"][0]["keyframe"] = "keyframes/a\x00.png"


def plan_cases(prefix: list[str], flag: str | None = None, extra: tuple[str, ...] = ()) -> list:
    """The broken-plan-folder cases every command that reads a plan folder shares."""

    def argv(folder_of: Callable[[Inputs], str]) -> Callable[[Inputs], list[str]]:
        if flag is None:
            return lambda t: [*prefix, folder_of(t), *extra]
        return lambda t: [*prefix, flag, folder_of(t), *extra]

    return [
        case("plan-missing", "plan.json not found", argv(lambda t: t.path("nowhere"))),
        case("plan-empty-folder", "plan.json not found", argv(lambda t: t.folder("empty"))),
        case("plan-empty-plan-json", "is not valid JSON", argv(lambda t: os.path.dirname(t.file("p/plan.json", "")))),
        case("plan-binary-plan-json", "is not valid JSON", argv(lambda t: os.path.dirname(t.binary("p/plan.json")))),
        case("plan-huge-plan-json", "is not valid JSON", argv(lambda t: os.path.dirname(t.huge("p/plan.json")))),
        case(
            "plan-list-plan-json",
            "top level must be an object",
            argv(lambda t: os.path.dirname(t.file("p/plan.json", "[1, 2]"))),
        ),
        case("plan-missing-field", "missing field 'steps'", argv(lambda t: t.plan(edit=_drop("steps")))),
        case("plan-nan-embedding", "holds NaN or infinite values", argv(lambda t: t.nan_plan())),
        case("plan-inf-embedding", "holds NaN or infinite values", argv(lambda t: t.nan_plan(value=float("-inf")))),
        case("plan-path-escapes", "points outside the plan folder", argv(lambda t: t.plan(edit=_escape))),
        case("plan-nul-in-keyframe-path", "holds a NUL character", argv(lambda t: t.plan(edit=_nul_keyframe))),
    ]


RENDERER = [
    *plan_cases(RENDER),
    case("render-context-7", "--context must be 1, 2 or 3", lambda t: [*RENDER, t.plan(), "--context", "7"]),
    case("render-context-0", "--context must be 1, 2 or 3", lambda t: [*RENDER, t.plan(), "--context", "0"]),
    case("render-size-0x0", "size must be positive", lambda t: [*RENDER, t.plan(), "--size", "0x0"]),
    case("render-size-not-wxh", "--size must be WxH", lambda t: [*RENDER, t.plan(), "--size", "big"]),
    case(
        "render-size-huge",
        "is too large: at most 4096 a side",
        lambda t: [*RENDER, t.plan(), "--size", "100000x100000"],
    ),
    case("render-unknown-preset", "unknown preset 'nope'", lambda t: ["render", t.plan(), "--preset", "nope"]),
    case("render-bad-override-key", "unknown config key 'foo'", lambda t: [*RENDER, t.plan(), "foo.bar=1"]),
    case(
        "render-bank-missing",
        "frame bank not found",
        lambda t: ["render", t.plan(), "--no-progress", "--bank", t.path("nowhere")],
    ),
    case(
        "render-bank-empty-folder",
        "frame bank not found",
        lambda t: ["render", t.plan(), "--no-progress", "--bank", t.folder("empty")],
    ),
    case(
        "render-bank-binary-bank-json",
        "bank.json is not valid JSON",
        lambda t: ["render", t.plan(), "--no-progress", "--bank", os.path.dirname(t.binary("b/bank.json"))],
    ),
    case(
        "render-bank-list-bank-json",
        "bank.json: top level must be an object",
        lambda t: ["render", t.plan(), "--no-progress", "--bank", os.path.dirname(t.file("b/bank.json", "[1, 2]"))],
    ),
    case("render-no-bank", "frame bank not found: none given", lambda t: ["render", t.plan(), "--no-progress"]),
    case(
        "render-plan-without-embeddings",
        "has no embeddings",
        lambda t: [*RENDER, str(make_keyframed_plan(t.tmp / "p", embeddings=False))],
    ),
    case(
        "render-checkpoint-missing",
        "renderer checkpoint not found",
        lambda t: [*RENDER, t.plan(), "--checkpoint", t.path("nowhere")],
    ),
    case("render-plan-being-written", "is being written by another process", lambda t: [*RENDER, t.lock(t.plan())]),
    *train_cases(),
]


@pytest.mark.parametrize(("make", "needle"), RENDERER)
def test_renderer(make, needle, tmp_path, request, capfd) -> None:
    check(renderer, make, needle, tmp_path, request, capfd)


def test_renderer_read_only_plan(tmp_path, request) -> None:
    plan = Path(Inputs(tmp_path, request).plan())
    read_only_run(tmp_path, ["renderer", *RENDER, str(plan)], plan, "Read-only file system")


# ----------------------------------------------------------------------------------------------------------------
# videogen

GEN = ["generate", "--preset", "default", "--no-progress"]
VTRAIN = ["train", "--preset", "tiny", "--no-progress"]


def _binary_keyframe(t: Inputs) -> str:
    folder = t.keyframed_plan()
    t.binary("plan/keyframes/001.png")
    return folder


VIDEOGEN = [
    *plan_cases(GEN),
    case("generate-plan-without-keyframes", "needs a keyframe for every step", lambda t: [*GEN, t.plan()]),
    case("generate-binary-keyframe", "cannot read keyframe", lambda t: [*GEN, _binary_keyframe(t)]),
    case("generate-frames-0", "--frames must be >= 1", lambda t: [*GEN, t.keyframed_plan(), "--frames", "0"]),
    case(
        "generate-frames-huge",
        "frames a step is too many",
        lambda t: [*GEN, t.keyframed_plan(), "--frames", "100000000"],
    ),
    case("generate-fps-0", "fps must be > 0", lambda t: [*GEN, t.keyframed_plan(), "--fps", "0"]),
    case("generate-fps-negative", "fps must be > 0", lambda t: [*GEN, t.keyframed_plan(), "--fps", "-24"]),
    case("generate-fps-nan", "fps must be > 0", lambda t: [*GEN, t.keyframed_plan(), "--fps", "nan"]),
    case(
        "generate-unknown-preset",
        "unknown preset 'nope'",
        lambda t: ["generate", t.keyframed_plan(), "--preset", "nope"],
    ),
    case("generate-bad-override-key", "unknown config key 'foo'", lambda t: [*GEN, t.keyframed_plan(), "foo.bar=1"]),
    case(
        "generate-checkpoint-missing",
        "videogen checkpoint not found",
        lambda t: [
            "generate",
            "--preset",
            "tiny",
            "--no-progress",
            t.keyframed_plan(),
            "--checkpoint",
            t.path("nowhere"),
        ],
    ),
    case(
        "generate-plan-being-written",
        "is being written by another process",
        lambda t: [*GEN, t.lock(t.keyframed_plan())],
    ),
    *train_cases(),
]


@pytest.mark.parametrize(("make", "needle"), VIDEOGEN)
def test_videogen(make, needle, tmp_path, request, capfd) -> None:
    check(videogen, make, needle, tmp_path, request, capfd)


def test_videogen_read_only_plan(tmp_path) -> None:
    plan = make_keyframed_plan(tmp_path / "plan")
    read_only_run(tmp_path, ["videogen", *GEN, str(plan)], plan, "Read-only file system")


# ----------------------------------------------------------------------------------------------------------------
# anchors

AGEN = ["generate", "--preset", "tiny"]
ATRAIN = ["train", "--preset", "tiny", "--no-progress"]
STORY = json.dumps({"title": "Toast", "events": ["Toast the bread.", "Butter it."]})


def _story(t: Inputs, data: str | bytes = STORY) -> str:
    return t.file("story.json", data)


def _condition_plan(t: Inputs, binary_keyframe: bool = False) -> str:
    folder = t.keyframed_plan("cond")
    if binary_keyframe:
        t.binary("cond/keyframes/001.png")
    return folder


ANCHORS = [
    case(
        "generate-story-missing",
        "story file not found",
        lambda t: [*AGEN, "--story", t.path("no.json"), "--out", t.out],
    ),
    case("generate-story-empty", "is not valid JSON", lambda t: [*AGEN, "--story", _story(t, ""), "--out", t.out]),
    case(
        "generate-story-binary", "is not valid JSON", lambda t: [*AGEN, "--story", t.binary("s.json"), "--out", t.out]
    ),
    case("generate-story-huge", "is not valid JSON", lambda t: [*AGEN, "--story", t.huge("s.json"), "--out", t.out]),
    case(
        "generate-story-list",
        "events[0] must be a string or an object with 'text'",
        lambda t: [*AGEN, "--story", _story(t, "[1, 2]"), "--out", t.out],
    ),
    case(
        "generate-story-wrong-shape",
        "'events' must be a list of events",
        lambda t: [*AGEN, "--story", _story(t, '{"events": 5}'), "--out", t.out],
    ),
    case(
        "generate-story-no-events",
        "the story has no events and no prompt",
        lambda t: [*AGEN, "--story", _story(t, '{"events": []}'), "--out", t.out],
    ),
    case(
        "generate-story-control-chars-only",
        "events[0] has no text",
        lambda t: [*AGEN, "--story", _story(t, json.dumps({"events": ["\x1b\x07\x00"]})), "--out", t.out],
    ),
    case(
        "generate-frames-0",
        "is too few for 2 events",
        lambda t: [*AGEN, "--story", _story(t), "--frames", "0", "--out", t.out],
    ),
    # no upper bound on --frames: a story longer than the model's window is generated in windows, at a cost
    # linear in its length (not an error)
    case(
        "generate-condition-not-plan-k",
        "expected PLAN_DIR:K",
        lambda t: [*AGEN, "--story", _story(t), "--condition", "x", "--out", t.out],
    ),
    case(
        "generate-condition-frame-0",
        "give distinct frame numbers >= 1",
        lambda t: [*AGEN, "--story", _story(t), "--condition", f"{_condition_plan(t)}:0", "--out", t.out],
    ),
    case(
        "generate-condition-plan-missing",
        "plan.json not found",
        lambda t: [*AGEN, "--story", _story(t), "--condition", f"{t.path('nowhere')}:1", "--out", t.out],
    ),
    case(
        "generate-condition-binary-keyframe",
        "cannot read its keyframe",
        lambda t: [*AGEN, "--story", _story(t), "--condition", f"{_condition_plan(t, True)}:1", "--out", t.out],
    ),
    case(
        "generate-condition-path-escapes",
        "points outside the plan folder",
        lambda t: [*AGEN, "--story", _story(t), "--condition", f"{t.plan(edit=_escape)}:1", "--out", t.out],
    ),
    case(
        "generate-no-default-preset",
        "there is no 'default' preset for anchors",
        lambda t: ["generate", "--story", _story(t), "--out", t.out],
    ),
    case(
        "generate-unknown-preset",
        "unknown preset 'nope'",
        lambda t: ["generate", "--preset", "nope", "--story", _story(t), "--out", t.out],
    ),
    case(
        "generate-bad-override-key",
        "unknown config key 'foo'",
        lambda t: [*AGEN, "--story", _story(t), "--out", t.out, "foo.bar=1"],
    ),
    case(
        "generate-out-under-a-file",
        "cannot write there",
        lambda t: [*AGEN, "--story", _story(t), "--out", t.under_file()],
    ),
    case(
        "generate-out-is-a-file",
        "is a file, not a plan folder",
        lambda t: [*AGEN, "--story", _story(t), "--out", t.file("f", "x")],
    ),
    case(
        "generate-out-holds-other-files",
        "exists and is not a plan folder",
        lambda t: [*AGEN, "--story", _story(t), "--out", os.path.dirname(t.file("mine/notes.txt", "keep me"))],
    ),
    case(
        "generate-out-being-written",
        "is being written by another process",
        lambda t: [*AGEN, "--story", _story(t), "--out", t.lock(t.out)],
    ),
    case(
        "generate-out-nul-in-path",
        "a path contains a NUL character",
        lambda t: [*AGEN, "--story", _story(t), "--out", t.path("a\x00b")],
    ),
    case(
        "train-no-default-preset",
        "there is no 'default' preset for anchors",
        lambda t: ["train", "--preset", "default", f"data={t.folder('d')}", "--out", t.out],
    ),
    *train_cases(),
]


@pytest.mark.parametrize(("make", "needle"), ANCHORS)
def test_anchors(make, needle, tmp_path, request, capfd) -> None:
    check(anchors, make, needle, tmp_path, request, capfd)


def test_anchors_read_only_out(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    story = tmp_path / "story.json"
    story.write_text(STORY)
    argv = ["anchors", *AGEN, "--story", str(story), "--out", str(folder / "p")]
    read_only_run(tmp_path, argv, folder, "Read-only file system")


# ----------------------------------------------------------------------------------------------------------------
# auteur

RUN = ["run", "--preset", "tiny"]
TOY = f"{sys.executable} {REPO / 'tests/auteur/metrics/toy_system.py'} {{prompt}} --out {{out}}"


def _run_json(t: Inputs, data: str | bytes) -> str:
    t.file("run/run.json", data)
    return str(t.tmp / "run")


def _yc2_labelled(t: Inputs, data: str) -> str:
    """A YouCook2-format prompts file ``data`` with its label_foodtype.csv beside it."""
    t.file("label_foodtype.csv", "101,toast\n")
    return t.file("youcookii_annotations_trainval.json", data)


def _image(t: Inputs, name: str = "img.png") -> str:
    from PIL import Image

    path = t.tmp / name
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path)
    return str(path)


AUTEUR = [
    *plan_cases(["show"]),
    case("embed-image-missing", "image not found", lambda t: ["embed", t.path("no.png"), "--out", t.out]),
    case("embed-image-binary", "cannot read image", lambda t: ["embed", t.binary("i.png"), "--out", t.out]),
    case("embed-image-empty", "cannot read image", lambda t: ["embed", t.file("i.png", ""), "--out", t.out]),
    case(
        "embed-open-clip-without-checkpoint",
        "backend open_clip needs vision.model_name",
        lambda t: ["embed", _image(t), "--backend", "open_clip", "--out", t.out],
    ),
    case(
        "embed-model-json-missing",
        "open_clip model config not found",
        lambda t: [
            "embed",
            _image(t),
            "--backend",
            "open_clip_json",
            "--model-json",
            t.path("no.json"),
            "--out",
            t.out,
        ],
    ),
    case(
        "embed-model-json-binary",
        "cannot read open_clip model config",
        lambda t: [
            "embed",
            _image(t),
            "--backend",
            "open_clip_json",
            "--model-json",
            t.binary("m.json"),
            "--out",
            t.out,
        ],
    ),
    case(
        "embed-out-under-a-file",
        "cannot write there",
        lambda t: [
            "embed",
            _image(t),
            "--backend",
            "open_clip_json",
            "--model-json",
            "tiny_open_clip",
            "--out",
            t.under_file(),
        ],
    ),
    case(
        "compare-prompts-missing",
        "not found",
        lambda t: ["compare", "--prompts", t.path("no.txt"), "--systems", f"toy={TOY}", "--out", t.out],
    ),
    case(
        "compare-prompts-empty",
        "no prompts found",
        lambda t: ["compare", "--prompts", t.file("p.txt", ""), "--systems", f"toy={TOY}", "--out", t.out],
    ),
    case(
        "compare-prompts-binary",
        "cannot read",
        lambda t: ["compare", "--prompts", t.binary("p.json"), "--systems", f"toy={TOY}", "--out", t.out],
    ),
    case(
        "compare-prompts-list",
        "unknown prompts format",
        lambda t: ["compare", "--prompts", t.file("p.json", "[1, 2]"), "--systems", f"toy={TOY}", "--out", t.out],
    ),
    case(
        "compare-prompts-wrong-shape",
        "no prompts found",
        lambda t: [
            "compare",
            "--prompts",
            _yc2_labelled(t, '{"database": {"x": 5}}'),
            "--systems",
            f"toy={TOY}",
            "--out",
            t.out,
        ],  # fmt: skip
    ),
    case(
        "compare-limit-0",
        "--limit must be >= 1",
        lambda t: [
            "compare",
            "--prompts",
            t.file("p.txt", "make toast\n"),
            "--systems",
            f"toy={TOY}",
            "--limit",
            "0",
            "--out",
            t.out,
        ],
    ),
    case(
        "compare-systems-not-name-equals",
        "is not NAME=COMMAND_OR_SYSTEM",
        lambda t: ["compare", "--prompts", t.file("p.txt", "make toast\n"), "--systems", "toy", "--out", t.out],
    ),
    case(
        "compare-unknown-preset",
        "unknown preset 'nope'",
        lambda t: [
            "compare",
            "--prompts",
            t.file("p.txt", "make toast\n"),
            "--systems",
            f"toy={TOY}",
            "--preset",
            "nope",
            "--out",
            t.out,
        ],
    ),
    case(
        "compare-bad-override-key",
        "unknown config key 'foo'",
        lambda t: [
            "compare",
            "--prompts",
            t.file("p.txt", "make toast\n"),
            "--systems",
            f"toy={TOY}",
            "--out",
            t.out,
            "foo.bar=1",
        ],
    ),
    case(
        "compare-out-under-a-file",
        "cannot write there",
        lambda t: [
            "compare",
            "--prompts",
            t.file("p.txt", "make toast\n"),
            "--systems",
            f"toy={TOY}",
            "--out",
            t.under_file(),
        ],
    ),
    case(
        "compare-out-being-written",
        "is being written by another process",
        lambda t: [
            "compare",
            "--prompts",
            t.file("p.txt", "make toast\n"),
            "--systems",
            f"toy={TOY}",
            "--out",
            t.lock(t.out),
        ],
    ),
    case(
        "export-run-missing",
        "is not an 'auteur compare' output folder",
        lambda t: ["export", "vistorybench", t.path("nowhere"), "--out", t.out],
    ),
    case(
        "export-run-empty-folder",
        "is not an 'auteur compare' output folder",
        lambda t: ["export", "vistorybench", t.folder("empty"), "--out", t.out],
    ),
    case("run-empty-query", "the query is empty", lambda t: [*RUN, "", "--out", t.out]),
    case("run-blank-query", "the query is empty", lambda t: [*RUN, " \t ", "--out", t.out]),
    case("run-control-chars-only-query", "the query is empty", lambda t: [*RUN, "\x07\x1b\x00", "--out", t.out]),
    case("run-huge-query", f"the query is {HUGE} characters long", lambda t: [*RUN, "x" * HUGE, "--out", t.out]),
    case("run-steps-0", "--steps must be at least 1", lambda t: [*RUN, "toast", "--steps", "0", "--out", t.out]),
    case(
        "run-steps-negative", "--steps must be at least 1", lambda t: [*RUN, "toast", "--steps", "-2", "--out", t.out]
    ),
    case(
        "run-unknown-preset", "invalid choice: 'nope'", lambda t: ["run", "toast", "--preset", "nope", "--out", t.out]
    ),
    case(
        "run-unknown-stage-preset",
        "--director-preset nope: not a director preset",
        lambda t: [*RUN, "toast", "--director-preset", "nope", "--out", t.out],
    ),
    case(
        "run-bank-missing",
        "is not a frame bank",
        lambda t: ["run", "toast", "--bank", t.path("nowhere"), "--out", t.out],
    ),
    case(
        "run-bank-empty-folder",
        "is not a frame bank",
        lambda t: ["run", "toast", "--bank", t.folder("empty"), "--out", t.out],
    ),
    case(
        "run-option-looking-query",
        "the following arguments are required: query",
        lambda t: [*RUN, "-x", "--out", t.out],
    ),
    case("run-out-under-a-file", "cannot write there", lambda t: [*RUN, "toast", "--out", t.under_file()]),
    case(
        "run-out-being-written",
        "is being written by another process",
        lambda t: [*RUN, "toast", "--out", t.lock(t.out)],
    ),
    case(
        "run-binary-run-json",
        "run.json is not valid JSON",
        lambda t: [*RUN, "toast", "--out", _run_json(t, bytes(range(128, 256)))],
    ),
    case(
        "run-list-run-json",
        "run.json: top level must be an object",
        lambda t: [*RUN, "toast", "--out", _run_json(t, "[1, 2]")],
    ),
    case(
        "run-another-query",
        "holds a run for another query",
        lambda t: [*RUN, "toast", "--out", _run_json(t, '{"query": "soup"}')],
    ),
]


@pytest.mark.parametrize(("make", "needle"), AUTEUR)
def test_auteur(make, needle, tmp_path, request, capfd) -> None:
    check(auteur, make, needle, tmp_path, request, capfd)


def test_auteur_read_only_out(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    read_only_run(tmp_path, ["auteur", *RUN, "toast", "--out", str(folder / "run")], folder, "Read-only file system")
