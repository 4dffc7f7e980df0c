"""Shared fixtures: the real configs composed with Hydra's compose API, and dataset roots on disk."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from partdistill import config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download at test time
sys.path.insert(0, str(Path(__file__).parent))  # the tests' own helpers (layouts.py)
config.register()

from layouts import make_all  # noqa: E402


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides, hydra=False): the config launch.py would compose."""

    def _compose(*overrides: str, hydra: bool = False):
        return config.compose(overrides, hydra=hydra)

    return _compose


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A $PART_DISTILLATION_ROOT holding a complete minimal layout of every dataset."""
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    return make_all(tmp_path)


@pytest.fixture
def empty_root(tmp_path, monkeypatch) -> Path:
    """A $PART_DISTILLATION_ROOT with no datasets folder at all."""
    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture
def synth(tmp_path, monkeypatch) -> Path:
    """A $PART_DISTILLATION_ROOT holding the built-in synthetic data set, 6 images per split."""
    from partdistill.data import synthetic

    monkeypatch.setenv("PART_DISTILLATION_ROOT", str(tmp_path))
    synthetic.synthesize("synthetic", tmp_path / "datasets/synthetic", num_images=6, seed=0)
    return tmp_path
