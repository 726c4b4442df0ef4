"""Run profiles: one place that decides device, precision, threads, seeds and the chapter's scale.

A chapter declares its scale knobs once, per profile
(`KNOBS = {"num_steps": {"smoke": 400, "full": 5000, "scaled": True}}`); its parameters cell holds
`profile`, `seed`, `budget` and `knobs`, a dict of overrides (`knobs = {"num_steps": 800}`, or
`ptm run ID -p num_steps=800`); `budget` multiplies every training length marked `scaled`, so a reader
trades time for fidelity in one place. `P, card = ptm.chapter(globals(), KNOBS)` reads all of it.

- `smoke`: CPU, a fixed small thread count, float32; a chapter runs in <= 60 s on 2 cores and is
  bit-for-bit repeatable.
- `full`: one GPU (CUDA) with bf16 autocast; <= 5 minutes a chapter on an H100.
- `auto`: `full` when CUDA is available, else `smoke`.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import torch

if TYPE_CHECKING:
    from ptmlib.claims import Scorecard

PROFILES = ("smoke", "full", "auto")
RUN_PROFILES = ("smoke", "full")
SMOKE_THREADS = 1  # 2 threads gained ~15% on a tiny GPT-2 but crawled under contention.


@dataclass(frozen=True)
class Profile:
    """A resolved profile: where and how a chapter runs, and its scale knobs."""

    name: str  # "smoke" or "full"
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 on CUDA, None (plain float32) on CPU
    num_threads: int
    seed: int
    budget: float
    knobs: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        knobs = object.__getattribute__(self, "knobs")
        if key in knobs:
            return knobs[key]
        raise AttributeError(f"profile has no knob {key!r}; knobs: {sorted(knobs)}")

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (and for `full` on a CPU with `PTM_CPU_BF16=1`), else a no-op."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def generator(self, offset: int = 0, device: str | torch.device | None = None) -> torch.Generator:
        """A torch generator seeded with `seed + offset` (separate streams), on the profile's device unless
        `device` is given (CPU-bound work such as small L-BFGS fits stays on the CPU in every profile)."""
        gen = torch.Generator(device=self.device if device is None else device)
        gen.manual_seed(self.seed + offset)
        return gen

    def summary(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.knobs.items())
        precision = "float32" if self.autocast_dtype is None else f"autocast {self.autocast_dtype}"
        return (f"profile={self.name} device={self.device.type} {precision} threads={self.num_threads} "
                f"seed={self.seed} budget={self.budget:g} | {knobs}")


def resolve_profile(
    name: str = "auto",
    *,
    seed: int = 0,
    budget: float = 1.0,
    knobs: Mapping[str, Mapping[str, Any]] | None = None,
    scaled: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    cuda_available: bool | None = None,
) -> Profile:
    """Resolve a profile name and a chapter's knob table into a `Profile`.

    `knobs` maps each knob to its value per run profile: `{"num_steps": {"smoke": 400, "full": 5000}}`.
    Training lengths are marked `"scaled": True` in their entry (or named in `scaled`): their profile
    value is multiplied by `budget` (rounded, at least 1). An override that is not `None` replaces the knob's value as given (it is not
    scaled). Raises `ValueError` for an unknown profile or knob, or a value of the wrong type.
    """
    if not isinstance(name, str) or name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ValueError(f"budget must be a positive number, got {budget!r}")
    knobs = {k: dict(v) for k, v in (knobs or {}).items()}
    scaled = set(scaled) | {k for k, v in knobs.items() if v.pop("scaled", False)}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if unknown := (set(overrides) | scaled) - set(knobs):
        raise ValueError(f"unknown knob(s) {sorted(unknown)}; allowed: {', '.join(sorted(knobs)) or '(none)'}")

    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    run = ("full" if cuda_available else "smoke") if name == "auto" else name
    device = torch.device("cuda" if run == "full" and cuda_available else "cpu")

    values: dict[str, Any] = {}
    for key, per_profile in knobs.items():
        if set(per_profile) != set(RUN_PROFILES):
            raise ValueError(f"knob {key!r} must give a value for each of {RUN_PROFILES}, got {sorted(per_profile)}")
        default = per_profile[run]
        if key in overrides:
            values[key] = _check_type(key, overrides[key], default)
        elif key in scaled:
            values[key] = _scale(key, default, budget)
        else:
            values[key] = default

    threads = int(os.environ.get("PTM_THREADS", 0)) or (
        SMOKE_THREADS if run == "smoke" else max(1, min(8, os.cpu_count() or 1)))
    return Profile(
        name=run,
        device=device,
        autocast_dtype=torch.bfloat16 if device.type == "cuda" or (run == "full" and cpu_bf16()) else None,
        num_threads=threads,
        seed=seed,
        budget=float(budget),
        knobs=values,
    )


def cpu_bf16() -> bool:
    """`PTM_CPU_BF16=1`: the full profile on a CPU runs under bf16 autocast as it would on a GPU (PyTorch's CPU
    autocast), so bf16-only failures show without a GPU (the full-at-tiny-budget test sets it)."""
    return os.environ.get("PTM_CPU_BF16") == "1"


def _check_type(key: str, value: Any, default: Any) -> Any:
    want = type(default)
    ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ValueError(f"knob {key!r} must be {want.__name__} (like its default {default!r}), "
                         f"got {type(value).__name__} {value!r}")
    return value


def _scale(key: str, value: Any, budget: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"scaled knob {key!r} must be a number, got {value!r}")
    return max(1, round(value * budget)) if isinstance(value, int) else value * budget


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). On CPU with a fixed thread count, runs repeat bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(
    profile: str = "auto",
    *,
    seed: int = 0,
    budget: float = 1.0,
    knobs: Mapping[str, Mapping[str, Any]] | None = None,
    scaled: Iterable[str] = (),
    quiet: bool = False,
    **overrides: Any,
) -> Profile:
    """The first call of every chapter: resolve the profile, set threads and seeds, quiet the libraries.

    Keyword overrides are the chapter's parameters (a value of `None` keeps the profile's value).
    """
    prof = resolve_profile(profile, seed=seed, budget=budget, knobs=knobs, scaled=scaled, overrides=overrides)
    torch.set_num_threads(prof.num_threads)
    seed_everything(seed)
    _quiet_libraries()
    from ptmlib.plots import use_style

    use_style()
    if not quiet:
        print(prof.summary())
    return prof


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency, but keep ptmlib importable
        pass


CHAPTER_RE = re.compile(r"(?:^|/)(?:chapters|tests/golden|_build/student)/([^/]+/[^/.]+)\.(?:md|ipynb)$")


def chapter_id(namespace: Mapping[str, Any]) -> str:
    """The running chapter's id (`icl/pfn`), derived, never typed: the `chapter` parameter that the runner
    (`ptm run`, `make book`, the goldens) injects, else the notebook path that a Jupyter server gives its
    kernel (`JPY_SESSION_NAME`, `__session__`, VS Code's `__vsc_ipynb_file__`), else `<folder>/notebook`."""
    if isinstance(namespace.get("chapter"), str):
        return namespace["chapter"]
    for path in (os.environ.get("JPY_SESSION_NAME"), namespace.get("__session__"), namespace.get("__vsc_ipynb_file__")):
        if isinstance(path, str) and (m := CHAPTER_RE.search(path.replace(os.sep, "/"))):
            return m.group(1)
    return f"{Path.cwd().name}/notebook"


def chapter(namespace: Mapping[str, Any], knobs: Mapping[str, Mapping[str, Any]], *, quiet: bool = False
            ) -> tuple[Profile, "Scorecard"]:
    """A chapter's header in one call: `P, card = ptm.chapter(globals(), KNOBS)`.

    Reads `profile`, `seed`, `budget` and the `knobs` overrides dict from the parameters cell's globals
    (and `control`, the name of one of the chapter's `CONTROLS` that the runner injects for a control run),
    resolves the profile with the chapter's knob table (`setup`), and opens its `Scorecard` under the
    derived chapter id. An unknown knob or a value of the wrong type raises `ValueError` in one line."""
    from ptmlib.claims import Scorecard

    overrides = namespace.get("knobs") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"knobs must be a dict of overrides like {{'steps': 100}}, got {overrides!r}")
    control = namespace.get("control") or ""
    controls = namespace.get("CONTROLS") or {}
    if control and control not in controls:
        raise ValueError(f"unknown control {control!r}; this chapter declares: {', '.join(controls) or 'none'}")
    prof = setup(namespace.get("profile", "auto"), seed=namespace.get("seed", 0), budget=namespace.get("budget", 1.0),
                 knobs=knobs, quiet=quiet, **overrides)
    if control and not quiet:
        print(f"control run '{control}': every reproduction below must fail")
    name = chapter_id(namespace)
    _glue_run_times(name)
    return prof, Scorecard(name, prof, control)


BENCH_FILE = Path("results") / "bench.json"


def run_times(chapter: str, root: Path | None = None) -> dict[str, str]:
    """How long the chapter took per profile, as `ptm bench` / `ptm calibrate` recorded it (`results/bench.json`
    under `root`, default the repository): {"smoke": "35 s on a 2-core x86_64 CPU (median of 10 seeds, ...)",
    "full": "not yet run on a GPU"}."""
    import json

    from ptmlib.paths import repo_root

    try:
        path = (root or repo_root()) / BENCH_FILE
        rec = json.loads(path.read_text()).get("chapters", {}).get(chapter, {}) if path.is_file() else {}
    except (FileNotFoundError, ValueError):
        rec = {}
    out = {}
    for prof, missing in (("smoke", "not measured yet"), ("full", "not yet run on a GPU")):
        r = rec.get(prof)
        out[prof] = f"{r['seconds']:.0f} s on a {r['machine']} ({r['how']}, {r['date']})" if r else missing
    return out


def _glue_run_times(chapter: str) -> None:
    """Glue `ptm_time_smoke` and `ptm_time_full` for the chapter's "Running this chapter" box."""
    from ptmlib import glue

    for prof, text in run_times(chapter).items():
        glue(f"ptm_time_{prof}", text)
