"""Learning-rate schedules, all in one place: each function returns a schedule, step -> learning rate.

With the default `peak=1.0` a schedule is a multiplier of the base learning rate (what `ptm.train`
applies through `TrainConfig.schedule`, see `ptmlib.train.lr_multiplier`); with `peak` set it is the
learning rate itself (what the ensemble race `ptmlib.lm.race` takes, one schedule per member).
Steps are 0-based; every schedule warms up linearly over its first `warmup` steps, from peak / warmup
at step 0 to the peak at step warmup - 1.

- `constant`: the peak after warmup.
- `cosine`: cosine decay from the peak to `floor * peak` at the last step, `steps - 1`.
- `wsd`: warmup-stable-decay (Hagele et al.): the peak until the last `decay_frac` of steps, then
  down to `floor * peak` at the last step, linearly or as 1 - sqrt(progress).
- `rewarm_cosine`: re-warming for continued pretraining (Gupta et al.): warmup, then cosine decay to
  `floor * peak` at step `steps` (one past the last step), held there afterwards.
- `infinite`: the infinite schedule (Singh et al.): warmup, cosine cooldown to a constant level, a
  constant phase of any length, and an optional short anneal.
- `power`: the Power scheduler (Shen et al.): min(peak, a * batch * tokens^b), then a short decay.
"""
from __future__ import annotations

import math
from typing import Callable

Schedule = Callable[[int], float]


def warmup(step: int, warmup_steps: int, peak: float = 1.0) -> float:
    """Linear warmup: peak * (step + 1) / warmup_steps (valid for step < warmup_steps)."""
    return peak * (step + 1) / warmup_steps


def cosine_decay(progress: float, floor: float) -> float:
    """Half a cosine from 1 at progress 0 to `floor` at progress 1."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def constant(warmup_steps: int = 0, peak: float = 1.0) -> Schedule:
    """Warmup, then the peak for ever."""
    def lr(step: int) -> float:
        return peak * (warmup(step, warmup_steps) if step < warmup_steps else 1.0)
    return lr


def cosine(steps: int, warmup_steps: int = 0, floor: float = 0.0, peak: float = 1.0) -> Schedule:
    """Warmup, then cosine decay from the peak to floor * peak at the last step (steps - 1)."""
    last = steps - 1

    def lr(step: int) -> float:
        if step < warmup_steps:
            return peak * warmup(step, warmup_steps)
        if last <= warmup_steps:
            return peak * 1.0
        return peak * cosine_decay((step - warmup_steps) / (last - warmup_steps), floor)
    return lr


def wsd(steps: int, warmup_steps: int = 0, decay_frac: float = 0.2, floor: float = 0.0, shape: str = "linear",
        peak: float = 1.0) -> Schedule:
    """Warmup-stable-decay: warmup, the peak until the last `decay_frac` of steps, then a decay to
    floor * peak at the last step, linear or (`shape="sqrt"`) as 1 - sqrt(progress)."""
    if shape not in ("linear", "sqrt"):
        raise ValueError(f"unknown shape {shape!r}; allowed: linear, sqrt")
    last = steps - 1
    decay_start = max(warmup_steps, last - round(decay_frac * steps))

    def lr(step: int) -> float:
        if step < warmup_steps:
            return peak * warmup(step, warmup_steps)
        if last <= warmup_steps or step <= decay_start:
            return peak * 1.0
        progress = (step - decay_start) / (last - decay_start)
        return peak * (1 - (1 - floor) * (progress if shape == "linear" else math.sqrt(progress)))
    return lr


def rewarm_cosine(peak: float, warmup_steps: int, steps: int, floor: float = 0.1) -> Schedule:
    """Re-warming (Gupta et al.): linear warmup from 0 to `peak` over `warmup_steps` steps, then cosine
    decay to floor * peak at step `steps`, held there afterwards."""
    def lr(step: int) -> float:
        if step < warmup_steps:
            return warmup(step, warmup_steps, peak)
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return peak * cosine_decay(min(1.0, t), floor)
    return lr


def infinite(peak: float, warmup_steps: int, cooldown: int, level: float, anneal_start: int | None,
             anneal: int, floor: float = 0.0) -> Schedule:
    """The infinite schedule (Singh et al.): warmup to `peak`, cosine cooldown to the constant `level`
    over `cooldown` steps, a constant phase of any length, and - only when a model is wanted - a short
    linear anneal from `level` to `floor` over `anneal` steps from `anneal_start` (None: never).
    Continued pretraining resumes in the constant phase, with no re-warming."""
    def lr(step: int) -> float:
        if step < warmup_steps:
            return warmup(step, warmup_steps, peak)
        if step < warmup_steps + cooldown:
            t = (step - warmup_steps) / cooldown
            return level + (peak - level) * 0.5 * (1 + math.cos(math.pi * t))
        if anneal_start is None or step < anneal_start:
            return level
        t = min(1.0, (step - anneal_start) / max(1, anneal))
        return level + (floor - level) * t
    return lr


def power(peak: float, a: float, b: float, batch: int, tokens_per_step: int, steps: int, warmup_steps: int = 0,
          decay_frac: float = 0.1) -> Schedule:
    """The Power scheduler (Shen et al.): warmup, then lr = min(peak, a * batch * n^b) with n the tokens
    seen so far (b < 0: a power-law decay that needs no planned length), then a linear decay to 0 over
    the last `decay_frac` of the steps."""
    decay_start = steps - round(decay_frac * steps)

    def lr(step: int) -> float:
        if step < warmup_steps:
            return warmup(step, warmup_steps, peak)
        stable = min(peak, a * batch * ((step + 1) * tokens_per_step) ** b)
        if step < decay_start:
            return stable
        top = min(peak, a * batch * (decay_start * tokens_per_step) ** b)
        return top * (steps - 1 - step) / max(1, steps - 1 - decay_start)
    return lr
