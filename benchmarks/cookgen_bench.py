"""CookGen build speed, printed as ratios against baselines run in the same process.

    python benchmarks/cookgen_bench.py [--shared ../shared/data] [--repeats 3]

1. Full YouCook2 annotation build (text only: read, screen, write the train/val Arrow splits, report):
   wall seconds (goal < 5 s on 2 cores), against the floor of merely parsing the JSON file.
2. Keyframe extraction on the VideoAuteur demo clips (one keyframe per step clip, as the build takes it):
   throughput as a multiple of real time (video seconds per wall second; goal >= 10x), against decoding
   every frame of each clip and keeping the one at the same time (the naive way).

Best of ``--repeats`` runs for each measurement (machines are noisy; the minimum is the least disturbed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ann = args.shared / "youcook2" / "youcookii_annotations_trainval.json"
    demos = args.shared / "videoauteur_demos"
    if not ann.exists() or not demos.exists():
        print(f"error: shared data not found under {args.shared} (pass --shared)", file=sys.stderr)
        return 2

    from auteur.video import decode_all, frames_at, probe
    from cookgen.build import BuildConfig, BuildOptions, build
    from cookgen.sources import read_youcook2

    # 1. annotation build
    cfg = BuildConfig()
    with tempfile.TemporaryDirectory() as tmp:
        holder = {}

        def full_build() -> None:
            source = read_youcook2(ann, ann.parent / "label_foodtype.csv")
            holder["report"] = build(cfg, source, Path(tmp) / "yc", "youcook2", options=BuildOptions(progress=False))

        full_build()  # warm-up: imports (datasets, pyarrow) are not part of the build
        t_build = best_of(full_build, args.repeats)
        t_json = best_of(lambda: json.loads(ann.read_bytes()), args.repeats)
    r = holder["report"]
    steps = sum(s["steps_before"] for s in r.splits.values())
    print(f"YouCook2 annotation build: {t_build:.3f} s for {steps} steps in {len(r.splits)} splits (goal < 5 s)")
    print(f"  baseline json.loads only: {t_json:.3f} s  -> build costs {t_build / t_json:.1f}x parsing the file")

    # 2. keyframe extraction
    clips = sorted(demos.glob("*/*/*.mp4"))
    infos = [probe(c) for c in clips]
    video_s = sum(i.duration for i in infos)

    def seek_keyframes() -> None:
        for c, i in zip(clips, infos):
            frames_at(c, [0.5 * i.duration])

    def decode_everything() -> None:
        for c, i in zip(clips, infos):
            t = 0.5 * i.duration
            keep = None
            for ts, frame in decode_all(c):
                if ts <= t:
                    keep = frame
            assert keep is not None

    t_seek = best_of(seek_keyframes, args.repeats)
    t_all = best_of(decode_everything, args.repeats)
    print(
        f"Keyframe extraction on {len(clips)} demo clips ({video_s:.0f} s of video): "
        f"{video_s / t_seek:.1f}x real time (goal >= 10x)"
    )
    print(
        f"  baseline decode every frame: {video_s / t_all:.1f}x real time  -> seeking is {t_all / t_seek:.1f}x faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
