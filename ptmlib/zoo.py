"""A small model zoo: models pretrained by this book's own code on a source task, trained
deterministically on first use and cached, so chapters on adaptation (Part III) and continual learning
(Part IV) start from a pretrained model without spending their time budget on it.

Each entry is a `ZooSpec`. The cache file is `cache_dir()/zoo/<name>-<key>.safetensors`, where the key
digests the spec and every source file of ptmlib: changing either retrains, and a clean cache gives
the same weights (training runs on the CPU with one thread and a seeded data stream).

- `stdlib-gpt`:  a GPT-2 language model on the standard-library corpus (`ptmlib.text`, BPE 1024).
- `stdlib-bert`: a BERT masked language model on the same corpus (80/10/10 masking of 15%).
- `digits-mlp`:  an MLP classifier trained on the 8x8 digits 0-4 only (its features are then reused
                 for digits 5-9, or for a class-incremental stream).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ptmlib.checkpoint import atomic_write
from ptmlib.data import digits
from ptmlib.models import tiny_bert, tiny_gpt2
from ptmlib.paths import cache_dir
from ptmlib.profiles import resolve_profile
from ptmlib.train import TrainConfig, code_version, fit, train


@dataclass(frozen=True)
class ZooSpec:
    """What defines a zoo model: architecture, source task and training recipe."""

    name: str
    kind: str  # "gpt" | "bert" | "digits-mlp"
    width: int = 64
    n_layer: int = 2
    steps: int = 400
    lr: float = 2e-3
    batch: int = 16
    seq_len: int = 64
    vocab: int = 1024
    classes: tuple[int, ...] = ()
    seed: int = 0


SPECS = {
    "stdlib-gpt": ZooSpec("stdlib-gpt", "gpt"),
    "stdlib-bert": ZooSpec("stdlib-bert", "bert"),
    "digits-mlp": ZooSpec("digits-mlp", "digits-mlp", width=128, steps=300, lr=3e-3, batch=64, classes=(0, 1, 2, 3, 4)),
}
KINDS = ("gpt", "bert", "digits-mlp")


class DigitsMLP(nn.Module):
    """x (B, 64) -> logits (B, 10); `features` is the last hidden layer (B, width)."""

    def __init__(self, width: int, n_layer: int) -> None:
        super().__init__()
        layers, d = [], 64
        for _ in range(n_layer):
            layers += [nn.Linear(d, width), nn.GELU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def depths(self) -> dict[str, int]:
        """Layer index of every parameter, 0 for the first linear layer ... n_layer for the head (what
        depth-dependent scaling such as LiNeS needs)."""
        n_layer = sum(isinstance(m, nn.Linear) for m in self.body)
        return {name: n_layer if name.startswith("head") else int(name.split(".")[1]) // 2
                for name, _ in self.named_parameters()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build(spec: ZooSpec) -> nn.Module:
    """The spec's architecture at its seeded random initialisation."""
    if spec.kind not in KINDS:
        raise ValueError(f"unknown zoo kind {spec.kind!r}; allowed: {', '.join(KINDS)}")
    torch.manual_seed(spec.seed)
    if spec.kind == "gpt":
        return tiny_gpt2(spec.vocab, spec.seq_len, n_embd=spec.width, n_layer=spec.n_layer, n_head=2)
    if spec.kind == "bert":
        return tiny_bert(spec.vocab, spec.seq_len, hidden=spec.width, n_layer=spec.n_layer, n_head=2)
    return DigitsMLP(spec.width, spec.n_layer)


def key(spec: ZooSpec) -> str:
    """Digest of the spec and of ptmlib's sources: the cache key."""
    blob = json.dumps(asdict(spec), sort_keys=True) + code_version(())
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def path(spec: ZooSpec) -> Path:
    return cache_dir() / "zoo" / f"{spec.name}-{key(spec)}.safetensors"


def load(name: str | ZooSpec, device: str | torch.device = "cpu", quiet: bool = True) -> nn.Module:
    """The pretrained model: from the cache, or trained now (deterministically) and cached. Eval mode."""
    spec = SPECS[name] if isinstance(name, str) else name
    model = build(spec)
    file = path(spec)
    if not file.exists():
        _pretrain(spec, model)
        atomic_write(file, lambda p: save_model(model, str(p)))
    load_model(model, str(file), device="cpu")
    return model.to(device).eval()


def _pretrain(spec: ZooSpec, model: nn.Module) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit reproducible on the CPU
    try:
        with torch.enable_grad():  # load() may be called under no_grad
            _train_on_source(spec, model)
    finally:
        torch.set_num_threads(threads)


def _train_on_source(spec: ZooSpec, model: nn.Module) -> None:
    from ptmlib.objectives import denoising
    from ptmlib import text

    P = resolve_profile("smoke", seed=spec.seed, cuda_available=False)
    cfg = TrainConfig(num_steps=spec.steps, lr=spec.lr, schedule="cosine", warmup_steps=spec.steps // 10,
                      min_lr_ratio=0.1, log_every=max(1, spec.steps))
    if spec.kind == "digits-mlp":
        x, y = digits(spec.classes, "train")
        fit(model, x, y, cfg, P, batch=spec.batch)
        return
    stream = text.token_stream("train", spec.vocab)

    def batch_fn(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ids = text.random_chunks(stream, spec.batch, spec.seq_len, g)
        if spec.kind == "gpt":
            return ids, ids  # the model shifts the labels itself
        b = denoising.mlm(ids, 0.15, spec.vocab, g)
        return b.inputs, b.targets

    train(model, batch_fn, lambda m, b: m(input_ids=b[0], labels=b[1]).loss, cfg, P, examples_per_step=spec.batch,
          tokens_per_step=spec.batch * spec.seq_len, progress=False)


def variant(base: str, **changes) -> ZooSpec:
    """A registered spec with some fields changed (give it its own `name` for clarity)."""
    return replace(SPECS[base], **changes)
