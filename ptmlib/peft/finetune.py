"""Fine-tuning a pretrained BERT-style encoder as a classifier, one method at a time, and measuring what
each method costs: trainable parameters, training memory, step time.

`Classifier` = encoder -> mean over real tokens -> LayerNorm -> linear head. `prepare(encoder, method)` freezes the
encoder and adds the method's trainable parts (ptmlib.peft.adapters):

    probe    only the head learns (features frozen)
    full     every encoder weight learns
    lora     rank-r updates on the attention query and value projections
    adapter  bottleneck adapters after each attention-output and feed-forward-output projection
    ia3      learned scales on keys, values and the feed-forward activations
    prompt   n soft prompt vectors prepended to the input embeddings
    unipt    a side network on the frozen encoder's hidden states (UniPT): no backprop through the encoder

`training_memory` counts bytes exactly instead of sampling a device's allocator, so it is the same on
every machine: parameters, gradients, AdamW's two moments, and every tensor autograd saves for the
backward pass (found with `torch.autograd.graph.saved_tensors_hooks`, each storage counted once).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.peft import adapters
from ptmlib.models import mean_pool
from ptmlib.profiles import Profile
from ptmlib.train import History, TrainConfig, train

METHODS = ("probe", "full", "lora", "adapter", "ia3", "prompt", "unipt")


class UniPTSide(nn.Module):
    """A light side network over the hidden states of every encoder layer (after UniPT, Diao et al.).

    The encoder runs without gradients; layer l's hidden state h_l (B, T, C) is projected to a small
    width d and merged into a running side state s: s_l = s_{l-1} + MLP(LN(down_l(h_l)) + s_{l-1}).
    Training touches only the side network, so no activation of the encoder is stored for backward."""

    def __init__(self, n_states: int, width: int, side: int = 64) -> None:
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(width, side) for _ in range(n_states))
        self.norm = nn.ModuleList(nn.LayerNorm(side) for _ in range(n_states))
        self.mix = nn.ModuleList(nn.Sequential(nn.Linear(side, side), nn.GELU(), nn.Linear(side, side))
                                 for _ in range(n_states))
        self.out_dim = side

    def forward(self, states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        s = torch.zeros(*states[0].shape[:-1], self.out_dim, device=states[0].device, dtype=states[0].dtype)
        for h, down, norm, mix in zip(states, self.down, self.norm, self.mix):
            s = s + mix(norm(down(h)) + s)
        return s


class Classifier(nn.Module):
    """encoder (BERT-style, with `get_input_embeddings`) -> pooled (B, C) -> logits (B, n_classes)."""

    def __init__(self, encoder: nn.Module, n_classes: int, n_prompt: int = 0, side: UniPTSide | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.side = side
        width = encoder.config.hidden_size
        if n_prompt:
            table = encoder.get_input_embeddings().weight
            rows = torch.randint(0, table.shape[0], (n_prompt,))
            self.prompt = nn.Parameter(table[rows].detach().clone())  # prompt tuning from real token rows
        else:
            self.prompt = None
        dim = side.out_dim if side is not None else width
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))  # standardised features

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The frozen encoder's hidden states (embeddings and every layer), each (B, T, C), without a graph:
        all a side network or a probe needs, so they can be computed once and cached."""
        with torch.no_grad():
            return self.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states

    def features(self, ids: torch.Tensor, mask: torch.Tensor,
                 states: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Pooled features (B, C) of ids (B, T) with attention mask (B, T); `states` (from
        `hidden_states`) replaces the encoder's forward pass for the probe and the side network."""
        if self.side is not None:
            return mean_pool(self.side(states or self.hidden_states(ids, mask)), mask)
        if states is not None:
            return mean_pool(states[-1], mask)
        if self.prompt is None:
            return mean_pool(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        embeds = self.encoder.get_input_embeddings()(ids)  # (B, T, C)
        prompt = self.prompt[None].expand(ids.shape[0], -1, -1)
        ones = torch.ones(ids.shape[0], self.prompt.shape[0], dtype=mask.dtype, device=mask.device)
        hidden = self.encoder(inputs_embeds=torch.cat([prompt, embeds], 1),
                              attention_mask=torch.cat([ones, mask], 1)).last_hidden_state
        return mean_pool(hidden[:, self.prompt.shape[0]:], mask)  # pool the real tokens only

    def forward(self, ids: torch.Tensor, mask: torch.Tensor,
                states: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        return self.head(self.features(ids, mask, states))


def _is_attention_output(name: str) -> bool:
    return name.endswith("attention.output.dense")


def prepare(encoder: nn.Module, method: str, n_classes: int, *, rank: int = 8, bottleneck: int = 16,
            n_prompt: int = 16, side: int = 64) -> Classifier:
    """A classifier whose trainable parameters are those of `method` (the encoder is modified in place:
    pass a copy). Raises ValueError for an unknown method."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    encoder.requires_grad_(method == "full")
    if method == "lora":
        adapters.inject(encoder, ["query", "value"], lambda n, lin: adapters.LoRALinear(lin, r=rank, alpha=2 * rank))
    elif method == "adapter":
        adapters.inject(encoder, ["output.dense"], lambda n, lin: adapters.Adapter(lin, bottleneck))
    elif method == "ia3":  # keys and values scaled at the output, feed-forward output layer at its input
        adapters.inject(encoder, ["key", "value", "output.dense"],
                        lambda n, lin: lin if _is_attention_output(n) else
                        adapters.IA3Linear(lin, feedforward=n.endswith("output.dense")))
    sidenet = UniPTSide(encoder.config.num_hidden_layers + 1, encoder.config.hidden_size, side) if method == "unipt" else None
    return Classifier(encoder, n_classes, n_prompt if method == "prompt" else 0, sidenet)


def pad_mask(ids: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Attention mask (B, T): 1 on real tokens, 0 on padding."""
    return (ids != pad_id).long()


@dataclass
class Memory:
    """Bytes needed by one training step, by kind."""

    params: int
    grads: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations


def training_memory(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> Memory:
    """Exact bytes of one AdamW training step of `model` on the loss `loss_fn(model)`: all parameters,
    one gradient per trainable parameter, AdamW's two moments per trainable parameter, and the distinct
    tensors saved by autograd for backward (parameters excluded - they are stored already)."""
    params = list(model.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model)
    del loss
    total = sum(p.numel() * p.element_size() for p in params)
    train_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return Memory(total, train_bytes, 2 * train_bytes, sum(seen.values()))


def step_time(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], repeats: int = 3, lr: float = 1e-3) -> float:
    """Median seconds of one AdamW step (forward, backward, update) after one warm-up step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    times = []
    for i in range(repeats + 1):
        if next(model.parameters()).is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()
        if next(model.parameters()).is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def cached_states(model: Classifier, ids: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The frozen encoder's hidden states for all of ids (N, T), stacked: (L + 1, N, T, C)."""
    return torch.cat([torch.stack(model.hidden_states(ids[i:i + batch], pad_mask(ids[i:i + batch])))
                      for i in range(0, len(ids), batch)], 1)


def fit(model: Classifier, ids: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, profile: Profile, *,
        batch: int = 32, states: torch.Tensor | None = None, data_seed_offset: int = 1000) -> History:
    """Train the classifier's trainable parameters with cross-entropy on random minibatches of (ids, y)
    (on the profile's device); `states` (from `cached_states`, probe and side network only) skips the frozen encoder."""
    def loss_fn(m: nn.Module, i: torch.Tensor) -> torch.Tensor:
        x = ids[i]
        return F.cross_entropy(m(x, pad_mask(x), None if states is None else tuple(states[:, i])), y[i])

    return train(model, lambda g: torch.randint(0, len(ids), (batch,), generator=g, device=g.device), loss_fn, cfg, profile,
                 examples_per_step=batch, tokens_per_step=batch * ids.shape[1], progress=False,
                 data_seed_offset=data_seed_offset)


@torch.no_grad()
def accuracy(model: Classifier, ids: torch.Tensor, y: torch.Tensor, states: torch.Tensor | None = None,
             batch: int = 256) -> float:
    """Fraction of ids (N, T) classified as y (N,) (`states` as in `fit`)."""
    model.eval()
    hits = 0
    for i in range(0, len(ids), batch):
        x, s = ids[i:i + batch], None if states is None else tuple(states[:, i:i + batch])
        hits += int((model(x, pad_mask(x), s).argmax(-1) == y[i:i + batch]).sum())
    return hits / len(ids)


class LayerwiseEnsemble(nn.Module):
    """LEVI (Roh et al.): a frozen pretrained MLP body (Linear/activation pairs) viewed layer by layer,
    plus a small model trained from scratch on the raw input. Each view gets its own linear head and
    the logits are averaged with learned softmax weights: x (B, d) -> logits (B, n_classes)."""

    def __init__(self, body: nn.Sequential, small: nn.Module, width: int, n_classes: int) -> None:
        super().__init__()
        self.body = body.requires_grad_(False)
        self.small = small
        n_views = len(body) // 2
        self.heads = nn.ModuleList(nn.Linear(width, n_classes) for _ in range(n_views))
        self.weights = nn.Parameter(torch.zeros(n_views + 1))

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every view: (n_views + 1, B, n_classes), the small model's last."""
        outs, h = [], x
        for i, head in enumerate(self.heads):
            h = self.body[2 * i + 1](self.body[2 * i](h))
            outs.append(head(h))
        return torch.stack(outs + [self.small(x)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("v,vbc->bc", torch.softmax(self.weights, 0), self.views(x))


def fit_arrays(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, profile: Profile, *,
               batch: int = 32, noise: float = 0.0, data_seed_offset: int = 1000,
               snapshot_every: int = 0) -> list[dict[str, torch.Tensor]]:
    """Train a classifier on arrays x (N, d), y (N,) with cross-entropy on random minibatches, adding
    Gaussian input noise of std `noise` (augmentation). Returns copies of the state dict taken every
    `snapshot_every` steps (empty when 0), for checkpoint averaging."""
    snaps: list[dict[str, torch.Tensor]] = []
    noise_gen = profile.generator(data_seed_offset + 1, device="cpu")

    def loss_fn(m: nn.Module, i: torch.Tensor) -> torch.Tensor:
        xb = x[i] + noise * torch.randn(x[i].shape, generator=noise_gen) if noise else x[i]
        return F.cross_entropy(m(xb.to(profile.device)), y[i].to(profile.device))

    def snapshot() -> float:
        snaps.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return 0.0

    if snapshot_every:
        cfg = replace(cfg, eval_every=snapshot_every)
    train(model, lambda g: torch.randint(0, len(x), (batch,), generator=g), loss_fn, cfg, profile,
          examples_per_step=batch, progress=False, data_seed_offset=data_seed_offset,
          evals={"snapshot": snapshot} if snapshot_every else None)
    model.cpu()
    return snaps


def fit_denoiser(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, cfg: TrainConfig, profile: Profile, *,
                 noise: float = 0.5, batch: int = 32, data_seed_offset: int = 1000) -> History:
    """Train a class-conditional denoiser model(x + noise * eps, classes) -> x with the mean squared error."""
    eps_gen = profile.generator(data_seed_offset + 1, device="cpu")

    def loss_fn(m: nn.Module, i: torch.Tensor) -> torch.Tensor:
        clean = x[i]
        noisy = clean + noise * torch.randn(clean.shape, generator=eps_gen)
        return F.mse_loss(m(noisy.to(profile.device), classes[i].to(profile.device)), clean.to(profile.device))

    hist = train(model, lambda g: torch.randint(0, len(x), (batch,), generator=g), loss_fn, cfg, profile,
                 examples_per_step=batch, progress=False, data_seed_offset=data_seed_offset)
    model.cpu()
    return hist


@torch.no_grad()
def denoising_error(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, noise: float = 0.5, seed: int = 99,
                    **kwargs) -> float:
    """Mean squared error of the denoised x on a fixed noise draw (the same for every model)."""
    g = torch.Generator().manual_seed(seed)
    return float(F.mse_loss(model(x + noise * torch.randn(x.shape, generator=g), classes, **kwargs), x))


def distil_hidden_states(student: nn.Module, teacher: nn.Module, batch_fn: Callable[[torch.Generator], dict],
                         cfg: TrainConfig, profile: Profile, *, batch: int = 16) -> History:
    """Feature distillation (PELA's intermediate stage): train the student's trainable weights so that
    every layer's hidden state matches the frozen teacher's, sum of per-layer mean squared errors.
    `batch_fn(gen)` returns a dict of encoder inputs (input_ids, attention_mask)."""
    teacher.eval()

    def loss_fn(m: nn.Module, enc: dict) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(**enc, output_hidden_states=True).hidden_states
        got = m(**enc, output_hidden_states=True).hidden_states
        return sum(F.mse_loss(a, b) for a, b in zip(got[1:], target[1:]))

    return train(student, batch_fn, loss_fn, cfg, profile, examples_per_step=batch, progress=False)
