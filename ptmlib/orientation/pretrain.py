"""Why pretrain: self-pretraining on a long-range task, and label efficiency of pretrained features.

Part 1 (Never Train from Scratch, Amos et al. 2024): an *associative recall* task whose label depends on
a distant token. A sequence holds n (key, value) pairs, keys drawn with replacement from a small set and
bound to one value per sequence, then a query key; the label is the query's value, which sits next to an
earlier occurrence of that key anywhere in the sequence. Self-pretraining is masked-token prediction on
the task's own inputs (no labels); fine-tuning and training from scratch predict the label at the last
position. Both arms and several replicas train side by side as members of one `EnsembleTransformer`
(`ptmlib.lm.ensemble_lm`): member e follows the denoising objective for its first `pre_steps[e]` steps,
then the supervised one, so every member takes the same total number of steps.

Part 2 (label efficiency): `label_ladder` draws nested labelled subsets (k examples per class);
`train_probes` fits E linear heads on frozen features side by side, each on its own subset, and
`train_token_classifiers` trains E small transformers from scratch on token ids the same way.

Shapes: E members, B sequences, T = 2n + 2 tokens, V vocabulary, N examples, d features, C classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ptmlib.ensemble import ELinear, EnsembleTransformer
from ptmlib.objectives.denoising import IGNORE, mlm
from ptmlib.text import MASK, N_SENTINELS, PAD, SENTINEL0

FIRST = SENTINEL0 + N_SENTINELS  # first regular token id: ids below it are PAD, EOS, MASK, ... (ptmlib.text)


@dataclass(frozen=True)
class MatchTask:
    """Do the two halves of a sequence match? A random first half of `half` symbols, then a copy of it in which,
    for half of the sequences, between `min_edits` and `max_edits` positions are replaced by other symbols.
    The label (a token id: MATCH or DIFFER) depends on tokens `half` positions apart, so nothing short-range
    reveals it. Token ids: symbols FIRST .. FIRST + n_symbols - 1, then the two label tokens."""

    half: int
    n_symbols: int
    max_edits: int = 1
    min_edits: int = 1

    @property
    def match(self) -> int:
        return FIRST + self.n_symbols

    @property
    def vocab_size(self) -> int:
        return FIRST + self.n_symbols + 2  # symbols, MATCH, DIFFER

    @property
    def length(self) -> int:
        return 2 * self.half

    def sample(self, B: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """B sequences (B, T) and their labels (B,): 0 (MATCH) if the second half copies the first, else 1."""
        dev = gen.device
        first = torch.randint(0, self.n_symbols, (B, self.half), generator=gen, device=dev)  # (B, h)
        differ = torch.rand(B, generator=gen, device=dev) < 0.5  # (B,)
        n_edits = torch.randint(self.min_edits, self.max_edits + 1, (B, 1), generator=gen, device=dev)
        rank = torch.rand(B, self.half, generator=gen, device=dev).argsort(1).argsort(1)  # a random order of positions
        edit = (rank < n_edits) & differ[:, None]  # (B, h): n_edits positions of each differing sequence
        shift = torch.randint(1, self.n_symbols, (B, self.half), generator=gen, device=dev)
        second = torch.where(edit, (first + shift) % self.n_symbols, first)  # an edit always changes the symbol
        ids = torch.cat([first, second], dim=1) + FIRST  # (B, T): first half, second half
        return ids, differ.long()

    @property
    def classes(self) -> list[int]:
        """The token ids whose read-out logits score the two labels (0: MATCH, 1: DIFFER)."""
        return [self.match, self.match + 1]


def mlm_inputs(ids: torch.Tensor, rate: float, n_regular: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoising objective on task inputs: BERT-style masking (`objectives.denoising.mlm`) of a share
    `rate` of the tokens, random replacements drawn from the ids below `n_regular`; (inputs (B, T),
    targets (B, T) with IGNORE where nothing is predicted)."""
    b = mlm(ids, rate, n_regular, gen, first_regular=FIRST)
    return b.inputs, b.targets


def member_batches(ids: torch.Tensor, labels: torch.Tensor, pretraining: torch.Tensor, batch: int,
                   rate: float, n_regular: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step's data for E members from a fixed training set ids (N, T), labels (N,): every member
    gets the same `batch` rows, masked for denoising (each member its own mask) where pretraining[e] (E,) is
    True, else intact. Returns inputs (E, B, T), denoising targets (E, B, T) (all IGNORE for the members that
    learn labels) and labels (E, B)."""
    E = len(pretraining)
    rows = torch.randint(0, len(ids), (batch,), generator=gen, device=gen.device).to(ids.device)
    x, y = ids[rows].repeat(E, 1), labels[rows].repeat(E)  # (E*B, T), (E*B,)
    masked, denoise = mlm_inputs(x, rate, n_regular, gen)
    pre = pretraining.to(ids.device).repeat_interleave(batch)[:, None]  # (E*B, 1)
    inputs = torch.where(pre, masked, x)
    targets = torch.where(pre, denoise, torch.full_like(x, IGNORE))
    return inputs.view(E, batch, -1), targets.view(E, batch, -1), y.view(E, batch)


def sequence_logits(model: EnsembleTransformer, inputs: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token logits (E, B, T, V) of the bidirectional model and the sequence logits (E, B, len(classes)):
    the read-out columns of the class tokens applied to the mean of the final hidden states (a linear
    read-out commutes with the mean)."""
    tok = model(inputs)  # (E, B, T, V)
    return tok, tok.mean(2)[..., classes]


def arm_losses(model: EnsembleTransformer, inputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                  pretraining: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Each member's loss (E,): masked-token cross-entropy if pretraining[e], else the cross-entropy of the
    sequence logits against labels (E, B). Their sum gives every member its own gradient."""
    tok, seq = sequence_logits(model, inputs, classes)
    out = []
    for e in range(len(pretraining)):
        if bool(pretraining[e]):
            out.append(F.cross_entropy(tok[e].flatten(0, 1), targets[e].flatten(), ignore_index=IGNORE))
        else:
            out.append(F.cross_entropy(seq[e], labels[e]))
    return torch.stack(out)


def self_pretrain(model: EnsembleTransformer, ids: torch.Tensor, labels: torch.Tensor, pre_steps: list[int],
                  total_steps: int, batch: int, lr: float, rate: float, task: MatchTask, gen: torch.Generator,
                  warmup: int = 10, callback: Callable[[int], None] | None = None) -> list[float]:
    """Train the E members with AdamW for `total_steps` steps: member e denoises for its first pre_steps[e]
    steps, then learns the labels. Linear warmup over `warmup` steps (step 0 moves nothing), then a
    constant learning rate; gradients clipped at norm 1. `callback(steps_done)` runs after every step (in
    eval mode, without gradients). Returns the summed loss per step."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    pre = torch.tensor(pre_steps)
    losses = []
    model.train()
    for step in range(total_steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / warmup) if warmup else lr
        pretraining = pre > step
        inputs, targets, y = (t.to(device) for t in member_batches(ids, labels, pretraining, batch, rate, task.match, gen))
        loss = arm_losses(model, inputs, targets, y, pretraining, task.classes).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if callback is not None:
            model.eval()
            with torch.no_grad():
                callback(step + 1)
            model.train()
    model.eval()
    return losses


def sequence_accuracy(model: EnsembleTransformer, ids: torch.Tensor, labels: torch.Tensor, classes: list[int],
                      chunk: int = 500) -> torch.Tensor:
    """Each member's accuracy (E,) on ids (N, T), labels (N,): arg-max of the sequence logits."""
    device = next(model.parameters()).device
    correct = torch.zeros(model.E)
    with torch.no_grad():
        for x, y in zip(ids.split(chunk), labels.split(chunk)):
            seq = sequence_logits(model, x.to(device).expand(model.E, *x.shape), classes)[1]  # (E, b, V)
            correct += (seq.argmax(-1).cpu() == y[None]).float().sum(1)
    return correct / len(ids)


def copy_accuracy(model: EnsembleTransformer, task: MatchTask, n: int, gen: torch.Generator) -> torch.Tensor:
    """Each member's accuracy (E,) at restoring one [MASK]ed token of the second half of n matching sequences:
    the answer is `half` positions away, so this measures the long-range copy that denoising teaches."""
    device = next(model.parameters()).device
    ids, labels = task.sample(n, gen)
    ids = ids[labels == 0]  # (n', T): second half = first half
    rows = torch.arange(len(ids))
    pos = task.half + torch.randint(0, task.half, (len(ids),), generator=gen, device=gen.device)
    masked = ids.clone()
    masked[rows, pos] = MASK
    with torch.no_grad():
        tok = model(masked.to(device).expand(model.E, *masked.shape))  # (E, n', T, V)
    return (tok[:, rows, pos].argmax(-1).cpu() == ids[rows, pos][None]).float().mean(1)


def label_ladder(labels: torch.Tensor, per_class: list[int], gen: torch.Generator) -> list[torch.Tensor]:
    """Nested labelled subsets: for each k in per_class (increasing), the row indices of the first k examples
    of every class in one seeded random order, so each subset contains the smaller ones."""
    order = torch.randperm(len(labels), generator=gen)
    out = []
    for k in per_class:
        rows = [order[labels[order] == c][:k] for c in labels.unique()]
        if any(len(r) < k for r in rows):
            raise ValueError(f"a class has fewer than {k} examples")
        out.append(torch.cat(rows).sort().values)
    return out


def train_probes(train_x: torch.Tensor, labels: torch.Tensor, subsets: list[torch.Tensor], n_classes: int,
                 steps: int, gen: torch.Generator, lr: float = 1e-2, batch: int = 32, weight_decay: float = 1e-2,
                 warmup: int = 20) -> ELinear:
    """E = len(subsets) linear heads on frozen features train_x (N, d), fitted side by side with AdamW on
    cross-entropy: head e trains on the rows subsets[e] (minibatches drawn with replacement). The heads start
    at zero (an untrained head predicts class 0 for every input) and the learning rate warms up linearly over
    `warmup` steps (step 0 moves nothing). Returns the heads: features (E, b, d) -> logits (E, b, C)."""
    E = len(subsets)
    heads = ELinear(E, train_x.shape[1], n_classes, std=0.0)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / warmup)
        rows = torch.stack([s[torch.randint(0, len(s), (batch,), generator=gen)] for s in subsets])  # (E, b)
        loss = F.cross_entropy(heads(train_x[rows]).flatten(0, 1), labels[rows].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return heads


def pooled_logits(model: EnsembleTransformer, ids: torch.Tensor) -> torch.Tensor:
    """A sequence classifier on token ids: the read-out (d_out = classes) of the mean final hidden state over
    the non-PAD tokens, which attend to each other bidirectionally. ids (E, B, T) -> logits (E, B, C)."""
    E, B, T = ids.shape
    keep = ids != PAD  # (E, B, T)
    mask = (keep[:, :, None, :] & keep[:, :, :, None]) | torch.eye(T, dtype=torch.bool, device=ids.device)
    h = model.hidden(ids, mask.reshape(E * B, 1, T, T))[-1]  # (E, B, T, C)
    h = model.ln_f(h.reshape(E, B * T, -1)).reshape(E, B, T, -1)
    w = keep[..., None].float()
    pooled = (h * w).sum(2) / w.sum(2).clamp(min=1)  # (E, B, C)
    return model.read_out(pooled)


def train_token_classifiers(model: EnsembleTransformer, ids: torch.Tensor, labels: torch.Tensor,
                            subsets: list[torch.Tensor], steps: int, gen: torch.Generator, lr: float = 3e-3,
                            batch: int = 32, warmup: int = 20) -> None:
    """Train the E = len(subsets) members of `model` (`pooled_logits`) from scratch, member e on the labelled
    rows subsets[e] of ids (N, T), labels (N,); AdamW with linear warmup (step 0 moves nothing), then constant."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / warmup)
        rows = torch.stack([s[torch.randint(0, len(s), (batch,), generator=gen)] for s in subsets])  # (E, b)
        loss = F.cross_entropy(pooled_logits(model, ids[rows]).flatten(0, 1), labels[rows].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def labels_to_reach(per_class: list[int], accuracy: list[float], target: float) -> float:
    """The smallest label count (per class) at which an accuracy curve over the rungs `per_class` (increasing)
    reaches `target`, interpolating linearly in log2(labels) between rungs; inf if it never does."""
    if accuracy[0] >= target:
        return float(per_class[0])
    for (k0, a0), (k1, a1) in zip(zip(per_class, accuracy), zip(per_class[1:], accuracy[1:])):
        if a1 >= target:
            t = (target - a0) / (a1 - a0)
            return 2 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)))
    return math.inf
