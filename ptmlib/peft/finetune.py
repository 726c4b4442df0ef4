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
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.peft import adapters
from ptmlib.data import index_batches
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
        # prompt tuning from real token rows (ptmlib.peft.adapters); the same encoder, its inputs prefixed
        self.prompted = adapters.PromptTuning(encoder, n_prompt) if n_prompt else None
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
        if self.prompted is None:
            return mean_pool(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        hidden = self.prompted(ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden[:, self.prompted.prompt.shape[0]:], mask)  # pool the real tokens only

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


def fit_classifier(model: Classifier, ids: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, profile: Profile, *,
                   batch: int = 32, states: torch.Tensor | None = None, data_seed_offset: int = 1000) -> History:
    """Train the classifier's trainable parameters with cross-entropy on random minibatches of (ids, y)
    (on the profile's device); `states` (from `cached_states`, probe and side network only) skips the frozen
    encoder. What `ptm.fit` does for arrays, with the attention mask and the cached states as extra inputs."""
    def loss_fn(m: nn.Module, i: torch.Tensor) -> torch.Tensor:
        x = ids[i]
        return F.cross_entropy(m(x, pad_mask(x), None if states is None else tuple(states[:, i])), y[i])

    return train(model, index_batches(len(ids), batch), loss_fn, cfg, profile, examples_per_step=batch,
                 tokens_per_step=batch * ids.shape[1], progress=False, data_seed_offset=data_seed_offset)


@torch.no_grad()
def classifier_accuracy(model: Classifier, ids: torch.Tensor, y: torch.Tensor, states: torch.Tensor | None = None,
                        batch: int = 256) -> float:
    """Fraction of ids (N, T) classified as y (N,) (`states` as in `fit_classifier`), in batches of `batch`."""
    model.eval()
    hits = 0
    for i in range(0, len(ids), batch):
        x, s = ids[i:i + batch], None if states is None else tuple(states[:, i:i + batch])
        hits += int((model(x, pad_mask(x), s).argmax(-1) == y[i:i + batch]).sum())
    return hits / len(ids)
