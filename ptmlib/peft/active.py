"""Pool-based active learning on frozen features: which examples to label next.

- `select_uncertain`: the highest-entropy items; `select_balanced`: the same, round-robin over
  pseudo-classes (the class-balancing idea of active prompt learning); `select_representative`: items
  nearest to k-means centres (typical, diverse examples).
- `active_learning_curve`: test accuracy of a softmax probe after each labelling round of a strategy.
"""
from __future__ import annotations

import torch

from ptmlib.metrics import accuracy, entropy, fit_softmax_probe


def select_uncertain(probs: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
    """Indices of the k most uncertain (highest-entropy) pool items not yet in `exclude` (bool (N,))."""
    score = entropy(probs).masked_fill(exclude, -1.0)
    return score.topk(k).indices


def select_balanced(probs: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
    """k pool items spread over the predicted classes: round-robin over pseudo-labels, taking the most
    uncertain unlabelled item of each class in turn (so no class is starved of labels)."""
    pseudo = probs.argmax(-1)
    score = entropy(probs)
    taken = exclude.clone()
    chosen: list[int] = []
    classes = list(range(probs.shape[1]))
    while len(chosen) < k:
        progress = False
        for c in classes:
            if len(chosen) == k:
                break
            cand = (~taken & (pseudo == c)).nonzero().squeeze(1)
            if len(cand):
                best = int(cand[score[cand].argmax()])
                chosen.append(best)
                taken[best] = True
                progress = True
        if not progress:  # every pseudo-class exhausted: fall back to the most uncertain left
            rest = select_uncertain(probs, k - len(chosen), taken)
            chosen.extend(int(i) for i in rest)
    return torch.tensor(chosen)


def select_representative(features: torch.Tensor, k: int, exclude: torch.Tensor, gen: torch.Generator,
                          iters: int = 10) -> torch.Tensor:
    """k pool items that represent the pool: run k-means (k clusters, k-means++ start) on the features of
    the unlabelled items and take the item nearest to each centre (typical, diverse examples)."""
    pool = (~exclude).nonzero().squeeze(1)
    z = features[pool]
    centres = z[torch.randint(0, len(z), (1,), generator=gen)]
    for _ in range(k - 1):  # k-means++: next centre with probability proportional to squared distance
        d2 = torch.cdist(z, centres).min(1).values ** 2
        centres = torch.cat([centres, z[torch.multinomial(d2 / d2.sum(), 1, generator=gen)]])
    for _ in range(iters):
        assign = torch.cdist(z, centres).argmin(1)
        centres = torch.stack([z[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
    nearest = torch.cdist(centres, z).argmin(1)
    return pool[nearest.unique()]


STRATEGIES = ("random", "entropy", "balanced", "representative")


def active_learning_curve(pool_x: torch.Tensor, pool_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          n_classes: int, strategy: str, gen: torch.Generator, *, start: int = 10, step: int = 10,
                          rounds: int = 5, probe_iters: int = 200) -> list[float]:
    """Test accuracy of a softmax probe on frozen features after each labelling round: `start` random
    labels, then `rounds` rounds of `step` more chosen by `strategy` (one of `STRATEGIES`)
    from the rest of the pool; the probe is refitted by `probe_iters` L-BFGS iterations each round.
    Returns rounds + 1 accuracies (the label counts are start + i * step)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    labelled = torch.zeros(len(pool_x), dtype=torch.bool)
    labelled[torch.randperm(len(pool_x), generator=gen)[:start]] = True
    accs = []
    for r in range(rounds + 1):
        proba = fit_softmax_probe(pool_x[labelled], pool_y[labelled], n_classes, l2=1e-2, max_iter=probe_iters)
        accs.append(accuracy(proba(test_x), test_y))
        if r == rounds:
            break
        if strategy == "random":
            rest = (~labelled).nonzero().squeeze(1)
            new = rest[torch.randperm(len(rest), generator=gen)[:step]]
        elif strategy == "representative":
            new = select_representative(pool_x, step, labelled, gen)
        elif strategy == "entropy":
            new = select_uncertain(proba(pool_x), step, labelled)
        else:
            new = select_balanced(proba(pool_x), step, labelled)
        labelled[new] = True
    return accs
