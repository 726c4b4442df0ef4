"""Atomic checkpoints: weights in safetensors, the rest (optimizer, RNG, history) loaded `weights_only`.

A checkpoint folder holds `step<N>.safetensors`, `step<N>.state.pt` and a `latest.json` pointer that
is written last (atomically), so an interruption at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)`, then move the result onto `path` with one `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(folder: Path, model: torch.nn.Module, state: dict[str, Any], step: int, done: bool) -> None:
    """Write weights and state for `step`, then point `latest.json` at them and delete older steps."""
    folder = Path(folder)
    weights, extra = folder / f"step{step}.safetensors", folder / f"step{step}.state.pt"
    atomic_write(weights, lambda p: save_model(model, str(p)))
    atomic_write(extra, lambda p: torch.save(state, p))
    pointer = {"step": step, "done": done, "weights": weights.name, "state": extra.name}
    atomic_write(folder / "latest.json", lambda p: p.write_text(json.dumps(pointer)))
    for old in folder.glob("step*"):
        if old.name not in (weights.name, extra.name):
            old.unlink(missing_ok=True)


def load_checkpoint(folder: Path, model: torch.nn.Module) -> tuple[int, bool, dict[str, Any]] | None:
    """Load the latest checkpoint into `model`; return (step, done, state), or None if there is none."""
    pointer_path = Path(folder) / "latest.json"
    if not pointer_path.is_file():
        return None
    pointer = json.loads(pointer_path.read_text())
    load_model(model, str(Path(folder) / pointer["weights"]), device=str(next(model.parameters()).device))
    state = torch.load(Path(folder) / pointer["state"], weights_only=True, map_location="cpu")
    return pointer["step"], pointer["done"], state
