"""Small models that learn from big ones, and big models that start from small ones.

- `grow`: bert2BERT's function-preserving initialisation (Chen et al., 2022) for the book's ensemble
  transformers (`ptmlib.ensemble`): every width doubled, every head copied, and new blocks that start
  as the identity. The grown model computes exactly the small model's function (up to float rounding).
- `relations`, `minilm_loss`: MiniLM's deep self-attention distillation (Wang et al., 2020): the
  last layer's attention distributions softmax(q k^T / sqrt(d)) and value relations softmax(v v^T / sqrt(d)),
  matched by KL divergence, teacher to student (any widths, the same number of heads).
- `topk_targets`, `dense_targets`, `soft_cross_entropy`: TinyViT's stored sparse teacher outputs (Wu et al.,
  2022): keep the teacher's k largest probabilities and their indices once, rebuild a full distribution
  when the student replays them (the remaining mass spread evenly over the other classes).
- `steps_to_reach`: the first recorded step at which a loss curve reaches a target.

Shapes: E members, B sequences, T positions, C width, H heads, V vocabulary.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ptmlib.ensemble import EnsembleTransformer


def _split(w: torch.Tensor, dim: int, gen: torch.Generator, spread: float) -> torch.Tensor:
    """Double the fan-in axis `dim` of a weight whose inputs will arrive twice (x -> [x, x]): the two copies
    of each weight get shares a and 1 - a of it, a ~ U(1/2 - spread, 1/2 + spread) drawn per entry, so
    w_1 x + w_2 x = w x exactly while the copies differ (symmetry broken, as Net2Net's noise does)."""
    a = 0.5 + spread * (2 * torch.rand(w.shape, generator=gen, dtype=w.dtype) - 1)
    return torch.cat([w * a, w * (1 - a)], dim)


def _copy_heads(w: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Double the output axis (last) of a weight or bias made of `n_chunks` blocks (q, k, v: 3; else 1):
    each block [b] becomes [b, b], i.e. every attention head (or neuron) gets an exact copy."""
    return torch.cat([torch.cat([c, c], -1) for c in w.chunk(n_chunks, -1)], -1)


def grow(small: EnsembleTransformer, new_blocks: int = 0, spread: float = 0.25,
         gen: torch.Generator | None = None) -> EnsembleTransformer:
    """A model twice as wide (2C, 2H heads of the same size) and `new_blocks` blocks deeper that computes
    the same function as `small` (bert2BERT's function-preserving initialisation).

    Width: the residual stream x (C) becomes [x, x] (2C). A LayerNorm of [x, x] equals [LN(x), LN(x)] (same
    mean and variance), so every LayerNorm's weights are copied; every linear layer's outputs are copied
    (heads included: head h + H is head h) and its inputs, which now arrive twice, split each weight in two
    random shares that sum to it (`_split`). Depth: each new block is a copy of the last block with its two
    output projections (attention and MLP) set to zero, so it adds nothing to the residual stream at first.
    `small` needs an embedding table and no ALiBi (a copied head must keep its position bias)."""
    if small.embed is None or small.slopes is not None:
        raise ValueError("grow() needs a token model with learned (or no) positions, not ALiBi")
    gen = gen or torch.Generator().manual_seed(0)
    E, V, C = small.embed.shape
    H = small.blocks[0].H
    n_layer = len(small.blocks) + new_blocks
    max_len = 0 if small.pos is None else small.pos.shape[2]
    big = EnsembleTransformer(E, 0, small.read_out.weight.shape[2], 2 * C, n_layer, 2 * H, max_len=max_len,
                              vocab_size=V).to(small.embed.device)
    s = {k: v.detach() for k, v in small.state_dict().items()}
    new: dict[str, torch.Tensor] = {"embed": torch.cat([s["embed"], s["embed"]], -1)}
    if max_len:
        new["pos"] = torch.cat([s["pos"], s["pos"]], -1)
    for i in range(len(small.blocks)):
        p = f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            for t in ("weight", "bias"):
                new[p + f"{ln}.{t}"] = torch.cat([s[p + f"{ln}.{t}"]] * 2, -1)
        for name, chunks in (("qkv", 3), ("proj", 1), ("fc", 1), ("fc_out", 1)):
            new[p + f"{name}.weight"] = _copy_heads(_split(s[p + f"{name}.weight"], 1, gen, spread), chunks)
            new[p + f"{name}.bias"] = _copy_heads(s[p + f"{name}.bias"], chunks)
    last = len(small.blocks) - 1
    for j in range(len(small.blocks), n_layer):  # identity blocks: copies of the last with zero outputs
        for key in [k for k in new if k.startswith(f"blocks.{last}.")]:
            value = new[key].clone()
            if key.split(".")[2] in ("proj", "fc_out"):
                value.zero_()
            new[key.replace(f"blocks.{last}.", f"blocks.{j}.", 1)] = value
    for t in ("weight", "bias"):
        new[f"ln_f.{t}"] = torch.cat([s[f"ln_f.{t}"]] * 2, -1)
    new["read_out.weight"] = _split(s["read_out.weight"], 1, gen, spread)
    new["read_out.bias"] = s["read_out.bias"].clone()
    big.load_state_dict(new)
    return big


def relations(model: EnsembleTransformer, x: torch.Tensor, heads: int, causal: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM's two relations in the last block of every member, from that block's input x (E, B, T, C)
    (`model.hidden(...)[-2]`): the attention distributions softmax(q k^T / sqrt(d)) and the value relations
    softmax(v v^T / sqrt(d)), each (E, B, heads, T, T), with the causal mask. With `heads` equal to the
    block's own head count these are its attention maps (MiniLM); with fewer, q, k and v are cut into
    `heads` wider "relation heads" (MiniLMv2's way to compare a teacher and a student whose head counts
    differ). Differentiable: use it for the student and, under no_grad, for the teacher."""
    E, B, T, C = x.shape
    if C % heads:
        raise ValueError(f"width {C} is not divisible into {heads} relation heads")
    block, d = model.blocks[-1], C // heads
    h = block.ln_1(x.reshape(E, B * T, C))
    q, k, v = (t.reshape(E, B, T, heads, d).transpose(2, 3) for t in block.qkv(h).split(C, -1))  # (E, B, heads, T, d)
    mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if causal else None

    def relation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        scores = a @ b.transpose(-1, -2) / math.sqrt(d)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(-1)

    return relation(q, k), relation(v, v)


def relation_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between rows of relation matrices (..., H, T, T), summed over the last axis and
    averaged over everything else, per member: (E,) for inputs (E, ...). Masked entries (0 in both) add 0."""
    log_s = student.clamp_min(1e-12).log()
    kl = torch.special.xlogy(teacher, teacher) - teacher * log_s  # (E, ..., T, T)
    return kl.sum(-1).flatten(1).mean(1)


def minilm_loss(teacher: tuple[torch.Tensor, torch.Tensor], student: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
    """MiniLM's distillation loss per member (E,): KL of the attention distributions plus KL of the value
    relations, teacher (1 or E, B, H, T, T) to student (E, B, H, T, T)."""
    (t_att, t_val), (s_att, s_val) = teacher, student
    return relation_kl(t_att.expand_as(s_att), s_att) + relation_kl(t_val.expand_as(s_val), s_val)


def topk_targets(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What TinyViT stores per position: the k largest probabilities (float16) and their class indices
    (uint8 when V <= 256, else int16): logits (..., V) -> (..., k), (..., k)."""
    V = logits.shape[-1]
    values, idx = logits.float().softmax(-1).topk(k, dim=-1)
    return values.half(), idx.to(torch.uint8 if V <= 256 else torch.int16)


def dense_targets(values: torch.Tensor, idx: torch.Tensor, V: int) -> torch.Tensor:
    """The distribution a stored top-k record stands for (..., V): the stored probabilities at their indices,
    the remaining mass 1 - sum(values) spread evenly over the V - k other classes (TinyViT's label smoothing
    of the dropped classes)."""
    k = values.shape[-1]
    rest = (1 - values.float().sum(-1, keepdim=True)).clamp_min(0) / max(V - k, 1)
    out = rest.expand(*values.shape[:-1], V).clone()
    return out.scatter_(-1, idx.long(), values.float())


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over positions of -sum_v target_v log softmax(logits)_v: logits, target (..., V) -> scalar. With a
    teacher's distribution as target this is distillation's loss (KL plus the teacher's entropy)."""
    return -(target * logits.float().log_softmax(-1)).sum(-1).mean()


def steps_to_reach(steps: list[int], losses: list[float], target: float) -> float:
    """The first recorded step whose loss is at most `target` (inf if the curve never reaches it)."""
    for step, loss in zip(steps, losses):
        if loss <= target:
            return float(step)
    return math.inf


def teacher_outputs(teacher: EnsembleTransformer, ids: torch.Tensor, heads: int
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One forward pass of a one-member causal teacher on ids (B, T): its next-token distributions (B, T, V)
    and its last-layer relations (each (1, B, heads, T, T)), without gradients."""
    with torch.no_grad():
        states = teacher.hidden(ids[None], causal=True)
        B, T = ids.shape
        logits = teacher.read_out(teacher.ln_f(states[-1].reshape(1, B * T, -1))).reshape(B, T, -1)
        return logits.softmax(-1), relations(teacher, states[-2], heads)


def student_losses(students: EnsembleTransformer, ids: torch.Tensor, online: torch.Tensor, stored: torch.Tensor,
                   teacher_rel: tuple[torch.Tensor, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """Every training signal of this chapter for every student on the same causal-LM batch ids (B, T), from one
    forward pass: each entry is (E,). `hard`: cross-entropy to the next token; `online`: cross-entropy to the
    teacher's distributions computed now (B, T, V); `stored`: to distributions rebuilt from stored top-k records
    (B, T, V); `minilm`: MiniLM's relation loss against the teacher's last-layer relations. Position t
    predicts token t + 1, so the last position is not scored."""
    E = students.E
    B, T = ids.shape
    states = students.hidden(ids.expand(E, B, T), causal=True)
    logits = students.read_out(students.ln_f(states[-1].reshape(E, B * T, -1))).reshape(E, B, T, -1)[:, :, :-1]
    logp = logits.float().log_softmax(-1)  # (E, B, T-1, V)
    hard = -logp.gather(-1, ids[:, 1:].expand(E, B, T - 1)[..., None]).squeeze(-1)  # (E, B, T-1)
    return {"hard": hard.flatten(1).mean(1),
            "online": -(online[:, :-1] * logp).sum(-1).flatten(1).mean(1),
            "stored": -(stored[:, :-1] * logp).sum(-1).flatten(1).mean(1),
            "minilm": minilm_loss(teacher_rel, relations(students, states[-2], heads))}


def step_saving(steps: list[int], grown: list[float], scratch: list[float], target: float) -> float:
    """bert2BERT's yardstick: the fraction of steps saved by the grown model in reaching `target`,
    1 - t_grown / t_scratch, with t the first recorded step at or below the target. When only the grown model
    gets there, t_scratch is taken as the last step (a lower bound on the saving); when neither does, 0 (nothing
    was saved); when only the scratch model does, -1. Clipped to [-1, 1]."""
    t_grown, t_scratch = steps_to_reach(steps, grown, target), steps_to_reach(steps, scratch, target)
    if math.isinf(t_grown):
        return -1.0 if math.isfinite(t_scratch) else 0.0
    return max(-1.0, 1 - t_grown / min(t_scratch, steps[-1]))
