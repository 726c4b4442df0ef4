"""Benchmarks (not timed tests): each chapter's smoke wall time, the training loop's overhead against a
plain PyTorch loop doing the same work on the same model, and two trainer benchmarks that say whether
`ptm.train` is fit for GPU work (`trainer_benchmarks`): a GPT-2-small-class LM's model FLOPs utilisation,
and 16 tiny models trained as one batched ensemble against a Python loop over them."""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ptmlib.profiles import Profile, setup
from ptmlib.train import PEAK_BF16_FLOPS, TrainConfig, lr_multiplier, make_optimizer, train


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


def flops_per_token(n_params: int, n_layer: int, width: int, ctx: int) -> float:
    """Training FLOPs per token of a GPT (PaLM's appendix B, nanoGPT's `estimate_mfu`): 6N for the weight
    matmuls forward and backward, plus 12 L C T for attention's scores and weighted sums over a context of T."""
    return 6 * n_params + 12 * n_layer * width * ctx


def peak_flops(device: torch.device) -> float | None:
    """The card's dense bf16 peak (FLOP/s) from `PEAK_BF16_FLOPS`, None on a CPU or an unknown card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


GPT2_SMALL = {"n_layer": 12, "width": 768, "n_head": 12, "ctx": 1024, "vocab": 50304}  # 124M; vocab padded to 64k
TINY_GPT = {"n_layer": 2, "width": 64, "n_head": 2, "ctx": 64, "vocab": 256}  # what a CPU can time in seconds


def gpt_mfu(prof: Profile, size: dict[str, int], batch: int, steps: int, warmup: int, compile: bool) -> dict:
    """Train a GPT-2 LM on random tokens through `ptm.train` (bf16 autocast on CUDA, `compile` as the knob says):
    `warmup` steps (compilation), then `steps` timed ones. Returns tokens/s and MFU over the card's bf16 peak."""
    from ptmlib.models import tiny_gpt2

    torch.manual_seed(0)
    model = tiny_gpt2(size["vocab"], size["ctx"], size["width"], size["n_layer"], size["n_head"])
    n_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()  # as nanoGPT

    def batch_fn(gen: torch.Generator) -> torch.Tensor:  # (B, T) token ids, drawn on the profile's device
        return torch.randint(0, size["vocab"], (batch, size["ctx"]), generator=gen, device=gen.device)

    def loss_fn(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return m(input_ids=ids, labels=ids).loss

    cfg = TrainConfig(num_steps=warmup, lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95), compile=compile,
                      log_every=max(warmup, 1))
    tokens = batch * size["ctx"]
    train(model, batch_fn, loss_fn, cfg, prof, examples_per_step=batch, tokens_per_step=tokens, progress=False)
    hist = train(model, batch_fn, loss_fn, dataclasses.replace(cfg, num_steps=steps, log_every=steps), prof,
                 examples_per_step=batch, tokens_per_step=tokens, progress=False)
    tok_s = hist.tokens_per_s or 0.0
    flops = flops_per_token(n_params, size["n_layer"], size["width"], size["ctx"])
    peak = peak_flops(prof.device)
    return {"params_m": round(n_params / 1e6, 1), **size, "batch": batch, "steps": steps, "compiled": compile and prof.is_cuda,
            "tokens_per_s": round(tok_s), "tflops": round(flops * tok_s / 1e12, 2),
            "mfu": round(flops * tok_s / peak, 4) if peak else None, "final_loss": hist.loss[-1]}


def ensemble_vs_loop(prof: Profile, members: int = 16, steps: int = 200, batch: int = 32) -> dict:
    """Runs per hour for `members` seeds of the book's tiny LM (width 64, 2 layers, context 64): trained as one
    `EnsembleTransformer` of E = members, against a Python loop over `members` one-member models."""
    from ptmlib.lm import ensemble_lm

    V, T = 64, 64
    cfg = TrainConfig(num_steps=steps, lr=1e-3, log_every=steps)

    def make(E: int) -> torch.nn.Module:
        return ensemble_lm(E, V, width=64, n_layer=2, n_head=2, max_len=T)

    def batch_fn_for(E: int) -> Callable[[torch.Generator], torch.Tensor]:
        return lambda gen: torch.randint(0, V, (E, batch, T + 1), generator=gen, device=gen.device)

    def loss_fn(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:  # summed over members: each its own update
        logits = m(ids[..., :-1], causal=True)  # (E, B, T, V), every position scored (no per-member loop)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 2).float(), ids[..., 1:].flatten()) * ids.shape[0]

    def timed(E: int) -> float:
        torch.manual_seed(0)
        model = make(E)
        t0 = time.perf_counter()
        train(model, batch_fn_for(E), loss_fn, cfg, prof, examples_per_step=E * batch, progress=False)
        return time.perf_counter() - t0

    timed(1)  # warm-up: kernels, allocator
    batched = timed(members)
    loop = sum(timed(1) for _ in range(members))
    return {"members": members, "steps": steps, "batched_s": round(batched, 2), "loop_s": round(loop, 2),
            "batched_runs_per_hour": round(members / batched * 3600), "loop_runs_per_hour": round(members / loop * 3600),
            "speedup": round(loop / batched, 2)}


def trainer_benchmarks(profile: str = "full", echo: Callable[[str], None] = print) -> dict:
    """Both trainer benchmarks at `full` on CUDA (GPT-2 small, compiled, bf16; 16 tiny models); on a machine
    without CUDA, the same code at a tiny size, saying plainly that no GPU was measured."""
    prof = setup(profile, seed=0, quiet=True)
    on_gpu = prof.is_cuda
    if not on_gpu:
        echo("no CUDA device: the trainer benchmarks run at a tiny size on the CPU; no GPU was measured")
    gpt = (gpt_mfu(prof, GPT2_SMALL, batch=16, steps=200, warmup=20, compile=True) if on_gpu
           else gpt_mfu(prof, TINY_GPT, batch=4, steps=5, warmup=1, compile=False))
    ens = ensemble_vs_loop(prof) if on_gpu else ensemble_vs_loop(prof, members=4, steps=5, batch=4)
    mfu = f"MFU {gpt['mfu']:.1%}" if gpt["mfu"] is not None else "MFU not measured (no GPU)"
    echo(f"GPT ({gpt['params_m']}M params, context {gpt['ctx']}, batch {gpt['batch']}, "
         f"{'compiled' if gpt['compiled'] else 'eager'}): {gpt['tokens_per_s']:,} tokens/s, {gpt['tflops']} TFLOP/s, {mfu}")
    echo(f"{ens['members']} tiny LMs x {ens['steps']} steps: batched ensemble {ens['batched_s']} s "
         f"({ens['batched_runs_per_hour']:,} runs/h) vs a loop {ens['loop_s']} s ({ens['loop_runs_per_hour']:,} runs/h): "
         f"{ens['speedup']}x")
    from ptmlib.book.gpu import machine_info

    return {"machine": machine_info(), "gpu_measured": on_gpu, "gpt": gpt, "ensemble": ens}


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


def record_time(root: Path, chapter: str, profile: str, seconds: float, how: str, *, machine_name: str | None = None,
                date: str | None = None) -> None:
    """Store a chapter's wall time in `results/bench.json` (read by `ptm.chapter` for the "Running this
    chapter" box, and by the syllabus); `how` says how it was measured ("alone", "median of 10 seeds, 2 at once")."""
    import datetime
    import fcntl
    import json

    from ptmlib.profiles import BENCH_FILE

    path = root / BENCH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:  # several calibrations may record at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.is_file() else {"chapters": {}}
        data["chapters"].setdefault(chapter, {})[profile] = {
            "seconds": round(float(seconds), 1), "machine": machine_name or machine(), "how": how,
            "date": date or datetime.date.today().isoformat()}
        data["chapters"] = dict(sorted(data["chapters"].items()))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)
