"""Shared fixtures: the repository root, quiet libraries, one torch thread for repeatable timings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
torch.set_num_threads(1)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def smoke():
    from ptmlib.profiles import resolve_profile

    return resolve_profile("smoke", seed=0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Checkpoints and claims written by unit tests go to a temporary folder."""
    monkeypatch.setenv("PTM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PTM_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.delenv("PTM_CLAIMS_OUT", raising=False)
