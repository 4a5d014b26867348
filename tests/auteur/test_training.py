"""auteur.training: the checkpoint, RNG and log helpers the four training recipes share."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from auteur.training import (
    append_csv_row,
    checkpoint_dir,
    epoch_order,
    latest_checkpoint,
    prune_checkpoints,
    read_step,
    resume_checkpoint,
    rng_state,
    set_rng_state,
    start_csv_log,
    write_train_state,
)


def test_rng_state_round_trip_replays_every_generator():
    state = rng_state()
    assert set(state) == {"torch", "python", "numpy"}  # the keys director/anchors rng.pt files hold (no CUDA)
    first = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


def test_latest_checkpoint_skips_incomplete_and_resume_modes(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for step in (2, 4):
        checkpoint_dir(tmp_path, step).mkdir(parents=True)
        write_train_state(checkpoint_dir(tmp_path, step), step, opt)
    checkpoint_dir(tmp_path, 6).mkdir()  # no state.json: a half-written checkpoint
    assert latest_checkpoint(tmp_path).name == "step-000004"
    assert read_step(latest_checkpoint(tmp_path)) == 4
    assert latest_checkpoint(tmp_path, marker="missing.pt") is None
    assert resume_checkpoint(tmp_path, "auto", ValueError).name == "step-000004"
    with pytest.raises(ValueError, match="already holds checkpoints"):
        resume_checkpoint(tmp_path, "never", ValueError)
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004", "step-000006"]


def test_epoch_order_is_the_seeded_randperm():
    g = torch.Generator().manual_seed(3 * 100_003 + 1)
    assert epoch_order(10, 3, 1) == torch.randperm(10, generator=g).tolist()
    assert sorted(epoch_order(10, 3, 2)) == list(range(10)) and epoch_order(10, 3, 2) != epoch_order(10, 3, 1)


def test_csv_log_header_once_then_rows(tmp_path):
    path = tmp_path / "log.csv"
    start_csv_log(path, ["step", "loss"])
    append_csv_row(path, [1, "0.5"])
    start_csv_log(path, ["step", "loss"])  # a resumed run keeps its log
    assert path.read_text().splitlines() == ["step,loss", "1,0.5"]
