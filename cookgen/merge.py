"""``cookgen merge``: join the outputs of ``cookgen build --shard i/n`` runs into one dataset.

Each shard is a complete CookGen build of its share of the videos. Merging checks that the shards were
made from the same source and config (hence the same visual space) and hold disjoint videos, then
concatenates the splits, copies the keyframe and clip files (their paths are relative to the build
folder, so they stay valid) and sums the reports.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from auteur.io import (
    atomic_dir,
    atomic_write_json,
    check_writable_place,
    ensure_writable_dir,
    read_json_object,
    writer_lock,
)
from cookgen.build import MANIFEST, REPORT, write_splits
from cookgen.records import CookgenError
from cookgen.stats import split_names


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_json_object(path, CookgenError)
    except OSError as e:
        raise CookgenError(f"cannot read {path}: {e}") from None


def merge(shards: list[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge shard build folders into ``out``; returns the merged report."""
    from datasets import concatenate_datasets, load_from_disk

    shards = [Path(s) for s in shards]
    if not shards:
        raise CookgenError("no shard folders given")
    out = Path(out)
    if any(s.resolve() == out.resolve() for s in shards):
        raise CookgenError("--out must be a new folder, not one of the shards")
    manifests = []
    for s in shards:
        if not (s / MANIFEST).is_file():
            raise CookgenError(f"{s} is not a CookGen build: {MANIFEST} not found")
        manifests.append(_read(s / MANIFEST))
    first = manifests[0]
    for s, m in zip(shards[1:], manifests[1:]):
        if m.get("embedding_space") != first.get("embedding_space"):
            raise CookgenError(
                f"{s} is in visual space {m.get('embedding_space')} but {shards[0]} in "
                f"{first.get('embedding_space')}: embeddings from different encoders cannot be mixed"
            )
        if m.get("fingerprint") != first.get("fingerprint"):
            raise CookgenError(f"{s} was built from another source or config than {shards[0]}; cannot merge")
    shard_ids = [m.get("shard") for m in manifests]
    if len(set(shard_ids)) != len(shard_ids):
        raise CookgenError(f"the same shard appears twice among the inputs: {shard_ids}")
    check_writable_place(out)  # a busy or unwritable --out fails before the splits are read

    # splits: concatenate, refusing a video that two shards both hold
    rows_by_split: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, Path] = {}
    for s in shards:
        for split in split_names(s):
            ds = load_from_disk(str(s / split))
            for vid in set(ds["video_id"]):
                if vid in owner and owner[vid] != s:
                    raise CookgenError(f"video {vid} is in both {owner[vid]} and {s}: shards must be disjoint")
                owner[vid] = s
            rows_by_split.setdefault(split, []).append(ds)
    dim = first["embedding_space"]["dim"] if first.get("embedding_space") else None
    merged_rows = {k: concatenate_datasets(v).to_list() for k, v in rows_by_split.items()}
    with writer_lock(out):  # one writer per --out
        ensure_writable_dir(out)
        return _write(shards, out, first, merged_rows, dim)


def _write(shards: list[Path], out: Path, first: dict[str, Any], merged_rows: dict[str, list], dim) -> dict[str, Any]:
    """Write the merged build (files, splits, report, manifest) into ``out``; returns the report."""
    # keyframes and clips
    for sub in ("keyframes", "clips"):
        if any((s / sub).is_dir() for s in shards):
            with atomic_dir(out / sub) as tmp:
                for s in shards:
                    if (s / sub).is_dir():
                        shutil.copytree(s / sub, tmp, dirs_exist_ok=True)
    write_splits(out, merged_rows, dim)

    # reports
    report: dict[str, Any] = {"source": first.get("source"), "merged_from": [str(s) for s in shards], "splits": {}}
    for key in ("rejected_steps", "rejected_videos", "excluded", "captions"):
        report[key] = Counter()
    for s in shards:
        r = _read(s / REPORT)
        for split, counts in r.get("splits", {}).items():
            acc = report["splits"].setdefault(split, Counter())
            acc.update(counts)
        for key in ("rejected_steps", "rejected_videos", "excluded", "captions"):
            report[key].update(r.get(key, {}))
    report["excluded"].pop("other_shards", None)
    report = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in report.items()}
    report["splits"] = {k: dict(v) for k, v in report["splits"].items()}
    report["embedding_space"] = first.get("embedding_space")
    if (shards[0] / "config.yaml").exists():
        shutil.copyfile(shards[0] / "config.yaml", out / ".config.yaml.part")
        (out / ".config.yaml.part").replace(out / "config.yaml")
    atomic_write_json(out / REPORT, report)
    manifest = dict(first)
    manifest.update(shard="merged", splits={k: len(v) for k, v in merged_rows.items()})
    atomic_write_json(out / MANIFEST, manifest)
    return report
