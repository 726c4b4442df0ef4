"""Shared fixtures: the repository root, quiet libraries, one torch thread for repeatable timings."""
from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The book built from the goldens once per session: (html folder, the build process).

    It goes to `_build/test-book` (ignored by git) so that a person can open it, and the browser
    test's screenshots, afterwards. No local run's claims leak into its report page.
    """
    out = ROOT / "_build" / "test-book"
    env = dict(os.environ, PTM_CLAIMS_DIR=str(tmp_path_factory.mktemp("no-local-claims")))
    proc = subprocess.run([sys.executable, "-m", "ptmlib.book.cli", "build", "--from-goldens", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    return out / "_build" / "html", proc
