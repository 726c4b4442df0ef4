"""Benchmarks (not timed tests): each chapter's smoke wall time, and the training loop's overhead
against a plain PyTorch loop doing the same work on the same model."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ptmlib.profiles import setup
from ptmlib.train import TrainConfig, lr_multiplier, make_optimizer, train


def loop_overhead(num_steps: int = 300, repeats: int = 7) -> dict[str, float]:
    """Median wall time of `train` vs a hand-written loop (same model, data, optimizer, schedule, clipping)."""
    from ptmlib.icl.data import regression_prompts
    from ptmlib.icl.transformer import RegressionGPT, regression_loss

    prof = setup("smoke", seed=0, quiet=True)
    cfg = TrainConfig(num_steps=num_steps, lr=3e-3, schedule="cosine", warmup_steps=20, log_every=50)

    def batch_fn(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = regression_prompts(64, 8, 3, 0.3, gen)
        return x, y

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return RegressionGPT(3, 8, 32, 2, 2)

    def ours() -> float:
        model = fresh()
        t0 = time.perf_counter()
        train(model, batch_fn, regression_loss, cfg, prof, examples_per_step=64, progress=False)
        return time.perf_counter() - t0

    def plain() -> float:
        model = fresh().train()
        params = list(model.parameters())
        opt = make_optimizer(params, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, cfg))
        gen = prof.generator(1000)
        t0 = time.perf_counter()
        for _ in range(cfg.num_steps):
            loss = regression_loss(model, batch_fn(gen))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
        return time.perf_counter() - t0

    runs: dict[str, list[float]] = {"ours": [], "plain": []}
    fns: dict[str, Callable[[], float]] = {"ours": ours, "plain": plain}
    plain()  # warm-up (first optimizer import, allocator)
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(fn())
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"ours_s": med["ours"], "plain_s": med["plain"], "ratio": med["ours"] / med["plain"]}


def run_benchmarks(root: Path, chapters: list[str]) -> int:
    """Print each chapter's smoke wall time, then the loop overhead; non-zero if a chapter failed."""
    from ptmlib.book.runner import run_chapter

    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        for chapter in chapters:
            res = run_chapter(root, chapter, Path(tmp), {"profile": "smoke", "seed": 0})
            print(f"smoke {chapter:<40} {res.wall_s:6.1f} s  {'ok' if res.ok else 'FAILED'}", flush=True)
            status |= 0 if res.ok else 1
            if res.ok:
                record_time(root, chapter, "smoke", res.wall_s, "alone")
    r = loop_overhead()
    print(f"training loop: ptmlib.train {r['ours_s']:.2f} s vs plain PyTorch loop {r['plain_s']:.2f} s "
          f"(median of 7, 300 steps): overhead ratio {r['ratio']:.3f} (target <= 1.05)")
    return status


def machine() -> str:
    """This machine in a few words: accelerator, or CPU cores and architecture."""
    import os
    import platform

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core {platform.machine()} CPU"  # "a 2-core x86_64 CPU" in the text


def record_time(root: Path, chapter: str, profile: str, seconds: float, how: str) -> None:
    """Store a chapter's wall time in `results/bench.json` (read by `ptm.chapter` for the "Running this
    chapter" box, and by the syllabus); `how` says how it was measured ("alone", "median of 10 seeds, 2 at once")."""
    import datetime
    import json

    from ptmlib.profiles import BENCH_FILE

    path = root / BENCH_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"chapters": {}}
    data["chapters"].setdefault(chapter, {})[profile] = {
        "seconds": round(float(seconds), 1), "machine": machine(), "how": how,
        "date": datetime.date.today().isoformat()}
    data["chapters"] = dict(sorted(data["chapters"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
