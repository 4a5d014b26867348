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
    for step in (2, 4):
        checkpoint_dir(tmp_path, step).mkdir(parents=True)
        (checkpoint_dir(tmp_path, step) / "state.json").write_text(f'{{"step": {step}}}')
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


def test_rng_states_round_trip_through_safetensors_and_json(tmp_path):
    from auteur.training import read_rng_state, write_rng_state

    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    np.random.randn()  # a cached Gaussian in numpy's state
    write_rng_state(tmp_path, "rank-0", rng_state())
    first = (torch.rand(3), random.random(), np.random.rand(), np.random.randn())
    set_rng_state(read_rng_state(tmp_path, "rank-0"))
    again = (torch.rand(3), random.random(), np.random.rand(), np.random.randn())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-0.json", "rank-0.safetensors"]  # no pickle


def test_a_planted_pickle_in_optimizer_pt_is_refused_in_one_line(tmp_path):
    """A checkpoint's optimizer.pt that would run code when unpickled is refused (weights_only=True)."""
    import os
    import pickle

    from auteur.training import load_optimizer_file

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "optimizer.pt"
    path.write_bytes(pickle.dumps({"state": Evil()}))
    with pytest.raises(ValueError, match=r"optimizer.pt was refused \(UnpicklingError") as e:
        load_optimizer_file(path, ValueError)
    assert "\n" not in str(e.value) and not marker.exists()
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "params": ["w"]}]}, path)  # a real one loads
    assert load_optimizer_file(path, ValueError)["param_groups"][0]["params"] == ["w"]


def test_csv_log_is_cut_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "log.csv"
    start_csv_log(path, ["step", "split", "loss"])
    for step in range(1, 6):
        append_csv_row(path, [step, "train", f"{step / 10}"])
    append_csv_row(path, [4, "val", "0.3"])
    start_csv_log(path, ["step", "split", "loss"], resume_step=3)  # killed after step 5, resumed from step 3
    assert path.read_text().splitlines() == ["step,split,loss", "1,train,0.1", "2,train,0.2", "3,train,0.3"]


def test_lr_factor_is_a_function_of_the_optimizer_step():
    from auteur.training import TrainLoop, lr_factor

    loop = TrainLoop(warmup_steps=2, schedule="cosine", max_steps=10)
    f = [lr_factor(s, loop) for s in range(10)]
    assert f[:2] == [0.5, 1.0] and f[2] == 1.0 and f[-1] < 0.05 and all(a >= b for a, b in zip(f[2:], f[3:]))
    assert [lr_factor(s, TrainLoop(warmup_steps=4)) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]


def test_cyclic_batches_cover_every_sample_once_per_epoch():
    from auteur.training import cyclic_batch, shard

    batches = [cyclic_batch(10, step, 0, 4, seed=3) for step in range(5)]  # 20 positions: two epochs
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] == epoch_order(10, 3, 0)
    assert shard(batches[0], 0, 2) == [0, 2] and shard(batches[0], 1, 2) == [1, 3]
