"""Where things live: the repository root, the cache, the claims of the latest runs.

Everything cached between runs stays inside the repository (an ignored folder) unless an
environment variable moves it, so a fresh clone exercises the real code paths.
"""
from __future__ import annotations

import os
from pathlib import Path


def repo_root(start: Path | None = None) -> Path:
    """The book's root: the nearest folder holding `_toc.yml`, from `start` (default: cwd) upwards.

    Falls back to the folder above the installed `ptmlib` package (an editable install).
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file():
            return folder
    fallback = Path(__file__).resolve().parents[1]
    if (fallback / "_toc.yml").is_file():
        return fallback
    raise FileNotFoundError(f"no _toc.yml found above {here}: run from inside the book's repository")


def cache_dir() -> Path:
    """Cache for expensive artefacts (checkpoints, zoo models): `$PTM_CACHE` or `<repo>/.cache`."""
    env = os.environ.get("PTM_CACHE")
    path = Path(env) if env else _root_or_cwd() / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def claims_dir() -> Path:
    """Where a run writes its claims JSON: `$PTM_CLAIMS_DIR` or `<repo>/_build/claims`."""
    env = os.environ.get("PTM_CLAIMS_DIR")
    return Path(env) if env else _root_or_cwd() / "_build" / "claims"


def _root_or_cwd() -> Path:
    try:
        return repo_root()
    except FileNotFoundError:
        return Path.cwd()
