from __future__ import annotations

import pytest

from auteur.config import list_presets, load_config
from cookgen.build import BuildConfig
from cookgen.cli import PRESETS


def test_presets_are_listed() -> None:
    assert list_presets(PRESETS) == ["default", "paper", "tiny"]


@pytest.mark.parametrize("name", ["default", "paper", "tiny"])
def test_every_preset_loads_into_the_config(name: str) -> None:
    cfg = load_config(BuildConfig, name, preset_dir=PRESETS)
    assert isinstance(cfg, BuildConfig)
    assert (
        cfg.vision.backend == {"default": "efficientnet_lite0", "paper": "open_clip", "tiny": "open_clip_json"}[name]
    )
    assert cfg.caption.backend == ("qwen2_vl" if name == "paper" else "none")
