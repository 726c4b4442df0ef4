"""Shared fixtures: the repository root, quiet libraries, one torch thread for repeatable timings.

The suite runs in parallel (pytest-xdist, one worker per core, a notebook's cells on one worker);
`-m "not slow"` skips the chapter executions (the nbval goldens, papermill runs), the book build and the
browser, for a quick loop while editing. `make test` (and CI) runs everything."""
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


def pytest_collection_modifyitems(config, items):
    """Golden notebooks (nbval) are chapter executions: mark them slow."""
    golden = ROOT / "tests" / "golden"
    for item in items:
        if golden in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory) -> Path:
    """One cache per test worker for the standard-library corpus and its BPE tokenizers: parsing the
    standard library and training a tokenizer happen once per session, not once per test."""
    return tmp_path_factory.mktemp("text-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, request):
    """Checkpoints and claims written by unit tests go to a temporary folder (the text corpus and
    tokenizers to the session's shared `text_cache`)."""
    monkeypatch.setenv("PTM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PTM_TEXT_CACHE", str(request.getfixturevalue("text_cache")))
    monkeypatch.setenv("PTM_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.delenv("PTM_CLAIMS_OUT", raising=False)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The book built from the goldens once per session: (html folder, the build process).

    It goes to `_build/test-book` (ignored by git) so that a person can open it, and the browser
    test's screenshots, afterwards. No local run's claims leak into its report page.
    """
    import json

    from filelock import FileLock

    out = ROOT / "_build" / "test-book"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Under xdist several workers ask for the book: the first builds it, the others wait and reuse it.
    session = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
    done = out.parent / "test-book.done.json"
    with FileLock(str(out.parent / "test-book.lock")):
        if done.is_file() and json.loads(done.read_text())["session"] == session:
            rec = json.loads(done.read_text())
            return out / "_build" / "html", subprocess.CompletedProcess(rec["args"], rec["returncode"], rec["stdout"],
                                                                        rec["stderr"])
        import shutil

        shutil.rmtree(out, ignore_errors=True)  # a fresh build: an incremental one writes other script tags
        env = dict(os.environ, PTM_CLAIMS_DIR=str(tmp_path_factory.mktemp("no-local-claims")))
        proc = subprocess.run([sys.executable, "-m", "ptmlib.book.cli", "build", "--from-goldens", "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, env=env)
        done.write_text(json.dumps({"session": session, "args": proc.args, "returncode": proc.returncode,
                                    "stdout": proc.stdout, "stderr": proc.stderr}))
    return out / "_build" / "html", proc
