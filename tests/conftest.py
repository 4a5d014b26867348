"""Shared fixtures. ``../shared/data`` sits beside the checkout on developer machines and in CI only."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data is not beside this checkout ({path} missing): real-data test skipped")
    return path


@pytest.fixture
def youcook2_annotations() -> Path:
    return shared_path("youcook2", "youcookii_annotations_trainval.json")


@pytest.fixture
def demos_root() -> Path:
    return shared_path("videoauteur_demos")
