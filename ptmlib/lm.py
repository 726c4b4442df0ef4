"""Training several small language models side by side: one `EnsembleTransformer` with a token
embedding, member e trained on its own objective's `LMBatch`.

Shapes: E members, B rows, L positions, V vocabulary. `stack` pads E batches to a common length and
builds one attention mask per row; `scored_losses` returns each member's own mean loss (E,), whose
sum gives every member exactly the gradient it would get alone. `member_adamw_step` applies AdamW
with a different learning rate per member (AdamW's update is linear in the learning rate given its
moment estimates, so one optimizer step with lr = 1 followed by a per-member rescaling is exact).
`race` trains the members side by side as causal LMs on a Markov source, each with its own batches
(or all on the same ones) and its own learning-rate schedule (`ptmlib.schedules`), and records their
exact losses (entropy rate + KL, `markov.excess_eval`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ptmlib.ensemble import EnsembleTransformer
from ptmlib.markov import MarkovSource, excess_eval
from ptmlib.objectives.denoising import IGNORE, LMBatch, attention_mask, causal_lm, pad_batches
from ptmlib.profiles import Profile
from ptmlib.text import PAD


def ensemble_lm(E: int, vocab_size: int, width: int, n_layer: int, n_head: int, max_len: int = 0,
                alibi: bool = False) -> EnsembleTransformer:
    """E GPT-2-style language models (token ids (E, B, L) -> logits (E, B, L, V)), untied read-out;
    learned positions up to `max_len`, or ALiBi (`alibi=True`, no length limit)."""
    return EnsembleTransformer(E, 0, vocab_size, width, n_layer, n_head, max_len=0 if alibi else max_len,
                               vocab_size=vocab_size, alibi=alibi)


def _pad_rows(b: LMBatch, B: int) -> LMBatch:
    extra = B - b.inputs.shape[0]
    if extra == 0:
        return b
    return LMBatch(F.pad(b.inputs, (0, 0, 0, extra), value=PAD), F.pad(b.targets, (0, 0, 0, extra), value=IGNORE),
                   F.pad(b.prefix, (0, extra), value=0))


def stack(batches: list[LMBatch]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E batches -> inputs (E, B, L), targets (E, B, L), mask (E*B, 1, L, L); batches with fewer rows
    than the largest are padded with unscored rows."""
    B = max(b.inputs.shape[0] for b in batches)
    flat = pad_batches([_pad_rows(b, B) for b in batches])  # (E*B, L), member-major
    L = flat.inputs.shape[1]
    E = len(batches)
    return flat.inputs.view(E, B, L), flat.targets.view(E, B, L), attention_mask(flat.prefix, L)


def member_losses(model: EnsembleTransformer, batches: list[LMBatch]) -> torch.Tensor:
    """Each member's loss (E,) on its own batch, without gradients."""
    device = next(model.parameters()).device
    inputs, targets, mask = (t.to(device) for t in stack(batches))
    with torch.no_grad():
        return scored_losses(model, inputs, targets, mask).cpu()


def member_evals(model: EnsembleTransformer, sets: dict[str, list[LMBatch]],
                 members: list[str]) -> dict[str, Callable[[], float]]:
    """Eval hooks for `ptmlib.train`: one per (metric, member), named 'metric/member'. Each metric's
    E losses come from one stacked forward pass, computed when the first member's hook is called
    (`train` calls hooks in order) and read by the others."""
    memo: dict[str, torch.Tensor] = {}

    def hook(metric: str, e: int) -> Callable[[], float]:
        def fn() -> float:
            if e == 0:
                memo[metric] = member_losses(model, sets[metric])
            return float(memo[metric][e])
        return fn

    return {f"{metric}/{name}": hook(metric, e) for metric in sets for e, name in enumerate(members)}


def pooled_features(model: EnsembleTransformer, ids: torch.Tensor, bidirectional: list[bool],
                    chunk: int = 256, table: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the final (normalised) hidden states over each row's non-PAD tokens, for every member:
    ids (N, L) right-padded -> (E, N, C). Member e reads bidirectionally or causally (`bidirectional[e]`);
    `table` (E, V, C) replaces the model's embeddings (see `EnsembleTransformer.hidden`)."""
    device = next(model.parameters()).device
    E = len(bidirectional)
    out = []
    with torch.no_grad():
        for rows in ids.split(chunk):
            N, L = rows.shape
            lengths = (rows != PAD).sum(1)
            prefix = torch.stack([lengths if bi else torch.zeros_like(lengths) for bi in bidirectional])  # (E, N)
            mask = attention_mask(prefix.flatten(), L).to(device)
            h = model.hidden(rows.to(device).expand(E, N, L), mask, table=table)[-1]
            h = model.ln_f(h.reshape(E, N * L, -1)).reshape(E, N, L, -1)
            keep = (rows != PAD).to(device)[None, :, :, None].float()
            out.append(((h * keep).sum(2) / keep.sum(2).clamp(min=1)).cpu())
    return torch.cat(out, 1)


def member_adamw_step(opt: torch.optim.AdamW, lrs: torch.Tensor) -> None:
    """One AdamW step where member e (the leading axis of every parameter) uses learning rate lrs[e].

    `opt` must have lr = 1 in every group. A member with lr 0 does not move.
    """
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    before = [p.detach().clone() for p in params]
    opt.step()
    with torch.no_grad():
        for p, p0 in zip(params, before):
            scale = lrs.to(p.device, p.dtype).view(-1, *([1] * (p.dim() - 1)))
            p.copy_(p0 + scale * (p - p0))


def scored_losses(model: EnsembleTransformer, inputs: torch.Tensor, targets: torch.Tensor,
                  mask: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
    """Each member's mean cross-entropy over its scored positions (E,). The read-out (the costliest
    matmul at a large vocabulary) is applied only to the scored positions of each member.
    For plain causal LM pass mask=None, causal=True: the fused causal attention kernel is much faster
    than an explicit mask."""
    E, B, L = inputs.shape
    h = model.hidden(inputs, mask, causal)[-1].reshape(E, B * L, -1)
    h = model.ln_f(h)
    flat_t = targets.reshape(E, B * L)
    losses = []
    for e in range(E):
        keep = flat_t[e] != IGNORE
        logits = torch.addmm(model.read_out.bias[e], h[e, keep], model.read_out.weight[e])  # (n_e, V)
        losses.append(F.cross_entropy(logits.float(), flat_t[e, keep]))
    return torch.stack(losses)


def block_params(model: EnsembleTransformer) -> int:
    """Parameters of one member's transformer blocks (no embeddings, positions or read-out)."""
    return sum(p[0].numel() for p in model.blocks.parameters())


def step_flops(model: EnsembleTransformer, batch: LMBatch) -> float:
    """Training FLOPs (forward + backward) of one member on `batch`, by the 6 * params * tokens rule:
    every input position pays for the blocks, only scored positions pay for the read-out
    (`scored_losses`). Attention's L^2 term is left out (small at these lengths)."""
    width, vocab = model.read_out.weight.shape[1:]
    return 6.0 * (block_params(model) * batch.inputs.numel() + width * vocab * batch.scored())


def race(model: EnsembleTransformer, batch_fns: Callable[[torch.Generator], torch.Tensor]
         | Sequence[Callable[[torch.Generator], torch.Tensor]], lr_fns: Sequence[Callable[[int], float]], steps: int,
         profile: Profile, evals: dict[str, tuple[MarkovSource, torch.Tensor]],
         eval_every: int = 50) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """Train the E members of `model` (`ensemble_lm`) side by side as causal LMs with AdamW, member e
    with its own learning-rate schedule `lr_fns[e](step)`, on batches of ids (B, T) from `batch_fns`:
    one function gen -> ids shared by every member (one draw per step), or one function per member.
    At step 0, every `eval_every` steps and at the end, record each member's cross-entropy on every
    evaluation set {name: (MarkovSource, ids)}, as entropy rate + exact KL. Returns {name: [(step, (E,))]}.
    Members with equal schedules and batches stay identical; a member with lr 0 does not move."""
    E = len(lr_fns)
    shared = callable(batch_fns)
    if not shared and len(batch_fns) != E:
        raise ValueError(f"{len(batch_fns)} batch functions for {E} members")
    model.to(profile.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.0)
    gen = profile.generator(1000, device="cpu")
    curves: dict[str, list[tuple[int, torch.Tensor]]] = {name: [] for name in evals}

    def record(step: int) -> None:
        for name, (source, x) in evals.items():
            curves[name].append((step, excess_eval(model, source, x) + source.entropy_rate))

    record(0)
    for step in range(steps):
        if shared:
            b = causal_lm(batch_fns(gen))
            inputs, targets = (t.to(profile.device).expand(E, *t.shape) for t in (b.inputs, b.targets))
        else:
            batches = [causal_lm(fn(gen)) for fn in batch_fns]
            inputs = torch.stack([b.inputs for b in batches]).to(profile.device)
            targets = torch.stack([b.targets for b in batches]).to(profile.device)
        opt.zero_grad(set_to_none=True)
        scored_losses(model, inputs, targets, None, causal=True).sum().backward()
        member_adamw_step(opt, torch.tensor([fn(step) for fn in lr_fns]))
        if (step + 1) % eval_every == 0 or step == steps - 1:
            record(step + 1)
    return curves
