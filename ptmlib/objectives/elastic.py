"""One training, many sizes: elastic sub-networks, stitching, early exits and per-sample layer chains.

Everything runs on one small model family, `ResidualMLP`: a linear stem, `depth` pre-LayerNorm residual
blocks h <- h + W2 relu(W1 LN(h)) of width C (inner width `expand` * C), a final LayerNorm and a linear
head. Its weights are stored at full width, and every function here may run a *slice* of them:

- a width w <= C keeps the first w channels of the residual stream (and the first `expand` * w inner
  units): once-for-all training (POA, Zhang et al. 2024) samples such sub-networks at every step;
- a *chain* is the list of blocks to run, in order: (0, 1, 2, 3) is the model, (0, 2, 3) skips block 1,
  (0, 1, 1, 2, 3) runs block 1 twice (chain-of-layers, CoLa);
- `stitched_logits` runs the first k blocks of a narrow model, a linear stitching layer, and the
  remaining blocks of a wide one (SN-Net, Pan et al. 2023);
- `exit_probabilities` turns per-layer gate values into the probability of exiting at each layer
  (early-exit networks, JEI-DNN, Regol et al. 2024).

Training helpers wrap the book's loop `ptm.train` for this family: `classification_loss`,
`once_for_all_loss` and `stitch_path_loss` build the loss functions it calls on a batch of indices,
`train_alone` trains one size conventionally, `train_exits` trains early-exit heads (and gates) on a frozen
backbone's features; `exit_point` and `deployed_exits` read off what exits cost and achieve.

Costs are counted, not only computed: `counted_flops` runs a function under PyTorch's FLOP counter
(matrix multiplications, 2 FLOPs per multiply-add), and `block_flops` is the formula it must match.
Shapes: B samples, d input features, C width, K classes.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptmlib.profiles import Profile
from ptmlib.train import TrainConfig, train

IndexLoss = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (model, indices (B,)) -> scalar loss


class ResidualMLP(nn.Module):
    """A width- and depth-sliceable residual MLP: (B, d) -> (B, K)."""

    def __init__(self, d_in: int, n_classes: int, width: int, depth: int, expand: int = 2) -> None:
        super().__init__()
        self.width, self.depth, self.expand = width, depth, expand
        inner = expand * width
        self.stem = nn.Linear(d_in, width)
        self.ln_w = nn.Parameter(torch.ones(depth, width))
        self.ln_b = nn.Parameter(torch.zeros(depth, width))
        self.w1 = nn.Parameter(torch.randn(depth, inner, width) / width**0.5)
        self.b1 = nn.Parameter(torch.zeros(depth, inner))
        self.w2 = nn.Parameter(torch.randn(depth, width, inner) / inner**0.5 / depth**0.5)
        self.b2 = nn.Parameter(torch.zeros(depth, width))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def embed(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """The stem's output, first `width` channels: (B, d) -> (B, w)."""
        w = width or self.width
        return F.linear(x, self.stem.weight[:w], self.stem.bias[:w])

    def block(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """Residual block i at the width of h: (B, w) -> (B, w)."""
        w = h.shape[-1]
        e = self.expand * w
        z = F.layer_norm(h, (w,), self.ln_w[i, :w], self.ln_b[i, :w])
        z = F.relu(F.linear(z, self.w1[i, :e, :w], self.b1[i, :e]))
        return h + F.linear(z, self.w2[i, :w, :e], self.b2[i, :w])

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and head at the width of h: (B, w) -> (B, K)."""
        w = h.shape[-1]
        z = F.layer_norm(h, (w,), self.norm.weight[:w], self.norm.bias[:w])
        return F.linear(z, self.head.weight[:, :w], self.head.bias)

    def states(self, x: torch.Tensor, width: int | None = None, chain: Sequence[int] | None = None
               ) -> list[torch.Tensor]:
        """The residual stream after the stem and after each block of `chain`: len(chain) + 1 tensors (B, w)."""
        h = self.embed(x, width)
        out = [h]
        for i in range(self.depth) if chain is None else chain:
            h = self.block(h, i)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, width: int | None = None, depth: int | None = None,
                chain: Sequence[int] | None = None) -> torch.Tensor:
        """Logits of the sub-network with the first `width` channels and the first `depth` blocks, or of
        an explicit `chain` of blocks: (B, d) -> (B, K)."""
        if chain is None:
            chain = range(self.depth if depth is None else depth)
        return self.readout(self.states(x, width, chain)[-1])


def sample_sizes(widths: Sequence[int], depths: Sequence[int], gen: torch.Generator, n_random: int = 1
                 ) -> list[tuple[int, int]]:
    """The sub-networks of one once-for-all step (the "sandwich rule"): the full network, the smallest
    (min width, min depth), and `n_random` (width, depth) pairs drawn uniformly from the grid."""
    sizes = [(max(widths), max(depths)), (min(widths), min(depths))]
    for _ in range(n_random):
        i = int(torch.randint(len(widths), (1,), generator=gen, device=gen.device))
        j = int(torch.randint(len(depths), (1,), generator=gen, device=gen.device))
        sizes.append((widths[i], depths[j]))
    return sizes


def sub_network_loss(model: ResidualMLP, x: torch.Tensor, y: torch.Tensor, sizes: Sequence[tuple[int, int]],
                     distill: float = 0.0) -> torch.Tensor:
    """Once-for-all training's loss on a batch x (B, d), y (B,): the mean over `sizes` of each
    sub-network's cross-entropy. The first size is the teacher; with `distill` > 0 every other
    sub-network's loss is (1 - distill) * CE + distill * KL(teacher || sub-network), the teacher's
    probabilities detached (in-place self-distillation, as POA's elastic student learns from its teacher).
    Every sub-network shares the full network's weights."""
    teacher = model(x, *sizes[0])
    losses = [F.cross_entropy(teacher, y)]
    target = teacher.detach().log_softmax(-1)
    for w, d in sizes[1:]:
        logits = model(x, w, d)
        loss = F.cross_entropy(logits, y)
        if distill:
            kl = F.kl_div(logits.log_softmax(-1), target, log_target=True, reduction="batchmean")
            loss = (1 - distill) * loss + distill * kl
        losses.append(loss)
    return torch.stack(losses).mean()


def digit_pairs(x: torch.Tensor, y: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random pairs of digit images side by side and the sum of their labels mod 10:
    x (N, 64), y (N,) -> (n, 128), (n,). No single image decides the label: the model must read both
    digits and combine them, a task that needs width and depth (a linear model stays near chance)."""
    i = torch.randint(len(y), (2, n), generator=gen, device=gen.device).to(x.device)
    return torch.cat([x[i[0]], x[i[1]]], 1), (y[i[0]] + y[i[1]]) % 10


def block_flops(width: int, expand: int = 2) -> int:
    """FLOPs of one residual block on one sample (its two matrix multiplications, 2 per multiply-add)."""
    return 2 * 2 * width * expand * width


def network_flops(d_in: int, n_classes: int, width: int, n_blocks: int, expand: int = 2) -> int:
    """FLOPs of stem + `n_blocks` blocks + head on one sample (matrix multiplications only)."""
    return 2 * d_in * width + n_blocks * block_flops(width, expand) + 2 * width * n_classes


def counted_flops(fn: Callable[[], object]) -> int:
    """The FLOPs PyTorch's dispatcher counts while `fn()` runs (matrix multiplications; see
    torch.utils.flop_counter): a measurement of what was executed, not a formula."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def fit_stitch(h_from: torch.Tensor, h_to: torch.Tensor, ridge: float = 1e-3) -> nn.Linear:
    """A linear stitching layer initialised by ridge least squares, mapping activations of one model
    (N, a) onto another's (N, b) at the same stage (SN-Net's initialisation): nn.Linear(a, b)."""
    n, a = h_from.shape
    x = torch.cat([h_from, torch.ones(n, 1, dtype=h_from.dtype, device=h_from.device)], 1)  # (N, a + 1)
    gram = x.T @ x + ridge * n * torch.eye(a + 1, dtype=x.dtype, device=x.device)
    sol = torch.linalg.solve(gram, x.T @ h_to)  # (a + 1, b)
    layer = nn.Linear(a, h_to.shape[1]).to(h_from.device)
    with torch.no_grad():
        layer.weight.copy_(sol[:a].T)
        layer.bias.copy_(sol[a])
    return layer


def stitched_logits(small: ResidualMLP, large: ResidualMLP, stitch: nn.Module, x: torch.Tensor, k: int
                    ) -> torch.Tensor:
    """SN-Net's fast-to-slow stitch at k: the small model's stem and first k blocks, the stitching layer,
    then the large model's blocks k..depth-1 and head: (B, d) -> (B, K)."""
    h = small.states(x, chain=range(k))[-1]
    h = stitch(h)
    for i in range(k, large.depth):
        h = large.block(h, i)
    return large.readout(h)


def stitched_flops(d_in: int, n_classes: int, small_width: int, large_width: int, depth: int, k: int,
                   expand: int = 2) -> int:
    """FLOPs of `stitched_logits` at k on one sample (stem, k small blocks, stitch, depth - k large blocks, head)."""
    return (2 * d_in * small_width + k * block_flops(small_width, expand) + 2 * small_width * large_width
            + (depth - k) * block_flops(large_width, expand) + 2 * large_width * n_classes)


def exit_probabilities(gates: torch.Tensor) -> torch.Tensor:
    """Probability of exiting at each of L exits from gate values g (B, L) in [0, 1], read sequentially:
    q_l = g_l * prod_{j<l} (1 - g_j), and the last exit takes all remaining mass: (B, L), rows sum to 1."""
    g = torch.cat([gates[:, :-1], torch.ones_like(gates[:, -1:])], 1)
    survive = torch.cumprod(torch.cat([torch.ones_like(g[:, :1]), 1 - g[:, :-1]], 1), 1)  # prod_{j<l}(1-g_j)
    return g * survive


def threshold_exits(probs: torch.Tensor, tau: float) -> torch.Tensor:
    """The exit each sample takes under confidence thresholding: the first layer whose max softmax
    probability reaches `tau` (else the last). probs (B, L, K) -> exit index (B,) int64."""
    conf = probs.max(-1).values >= tau  # (B, L)
    conf[:, -1] = True
    return conf.float().argmax(1)


def chain_counts(depth: int, max_repeat: int) -> list[tuple[int, ...]]:
    """Every chain-of-layers that keeps the model's block order and runs each block 0..max_repeat times,
    as repeat counts per block ((max_repeat + 1) ** depth of them; (1, ..., 1) is the model itself)."""
    return list(itertools.product(range(max_repeat + 1), repeat=depth))


def chain_of(counts: Sequence[int]) -> list[int]:
    """The block sequence of repeat counts: (1, 0, 2) -> [0, 2, 2]."""
    return [i for i, c in enumerate(counts) for _ in range(c)]


@torch.no_grad()
def all_chain_predictions(model: ResidualMLP, x: torch.Tensor, max_repeat: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class of every chain of `chain_counts` on every sample, sharing prefixes (a block's
    output is computed once for all chains that start alike): (n_chains, B) int64, and each chain's
    number of blocks executed (n_chains,)."""
    states = {(): model.embed(x)}
    for i in range(model.depth):
        nxt = {}
        for prefix, h in states.items():
            for c in range(max_repeat + 1):
                nxt[prefix + (c,)] = h
                h = model.block(h, i)
        states = nxt
    counts = chain_counts(model.depth, max_repeat)
    preds = torch.stack([model.readout(states[c]).argmax(-1) for c in counts])
    return preds, torch.tensor([sum(c) for c in counts])


def shortest_correct(preds: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the fewest blocks of any chain that predicts its label (inf where none does):
    preds (n_chains, B), lengths (n_chains,), y (B,) -> (B,) float."""
    cost = torch.where(preds == y[None], lengths[:, None].float(), torch.tensor(float("inf")))
    return cost.min(0).values


class ExitHeads(nn.Module):
    """Early-exit modules on a frozen backbone: for each of L exits an inference module (LayerNorm +
    linear head) and a gate that reads the head's sorted log-probabilities (its confidence profile, not
    gradients into the head: JEI-DNN's gate sees the inference module's output).
    Features (B, L, C) -> logits (B, L, K), gate values (B, L) in (0, 1)."""

    def __init__(self, n_exits: int, width: int, n_classes: int) -> None:
        super().__init__()
        self.norm_w = nn.Parameter(torch.ones(n_exits, width))
        self.norm_b = nn.Parameter(torch.zeros(n_exits, width))
        self.head_w = nn.Parameter(torch.randn(n_exits, width, n_classes) / width**0.5)
        self.head_b = nn.Parameter(torch.zeros(n_exits, n_classes))
        self.gate_w = nn.Parameter(torch.zeros(n_exits, n_classes))
        self.gate_b = nn.Parameter(torch.zeros(n_exits))

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        z = F.layer_norm(feats, feats.shape[-1:]) * self.norm_w + self.norm_b  # (B, L, C)
        return torch.einsum("blc,lck->blk", z, self.head_w) + self.head_b

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(feats)
        profile = logits.detach().log_softmax(-1).sort(-1, descending=True).values  # (B, L, K)
        gates = torch.sigmoid((profile * self.gate_w).sum(-1) + self.gate_b)
        return logits, gates


def exit_loss(logits: torch.Tensor, gates: torch.Tensor, y: torch.Tensor, costs: torch.Tensor, lam: float
              ) -> torch.Tensor:
    """JEI-DNN's joint objective: the expected loss over the exit distribution q (from the gates) plus
    `lam` times the expected cost, E_q[CE_l + lam * cost_l]. logits (B, L, K), gates (B, L), y (B,),
    costs (L,) (e.g. blocks executed up to exit l, as a fraction of the full depth)."""
    B, L, K = logits.shape
    ce = F.cross_entropy(logits.reshape(B * L, K), y.repeat_interleave(L), reduction="none").reshape(B, L)
    q = exit_probabilities(gates)
    return (q * (ce + lam * costs)).sum(1).mean()


def gated_exits(gates: torch.Tensor, cut: float = 0.5) -> torch.Tensor:
    """The exit each sample takes at test time: the first gate value >= `cut` (else the last exit):
    gates (B, L) -> exit index (B,) int64."""
    fire = gates >= cut
    fire[:, -1] = True
    return fire.float().argmax(1)


@torch.no_grad()
def run_with_exits(model: ResidualMLP, heads: ExitHeads, x: torch.Tensor, cut: float = 0.5,
                   tau: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic inference as deployed: after each block only the samples that have not exited go on
    (the others stop computing), so the FLOPs executed (see `counted_flops`) follow the exits taken.
    A sample exits when its gate reaches `cut`, or, with `tau` set, when its head's top softmax
    probability reaches `tau` (confidence thresholding; the gates are then ignored).
    Exit l sits after block l. Returns predictions (B,) and exit indices (B,)."""
    B, L = len(x), model.depth
    pred = torch.empty(B, dtype=torch.int64, device=x.device)
    exit_at = torch.full((B,), L - 1, dtype=torch.int64, device=x.device)
    alive = torch.arange(B, device=x.device)
    h = model.embed(x)
    for i in range(L):
        h = model.block(h, i)
        z = F.layer_norm(h, h.shape[-1:]) * heads.norm_w[i] + heads.norm_b[i]
        logits = z @ heads.head_w[i] + heads.head_b[i]  # (b, K)
        profile = logits.log_softmax(-1).sort(-1, descending=True).values
        gate = torch.sigmoid(profile @ heads.gate_w[i, :, None] + heads.gate_b[i])[:, 0]  # (b,)
        fire = gate >= cut if tau is None else logits.softmax(-1).max(-1).values >= tau
        stop = fire | (i == L - 1)
        pred[alive[stop]] = logits[stop].argmax(-1)
        exit_at[alive[stop]] = i
        alive, h = alive[~stop], h[~stop]
        if len(alive) == 0:
            break
    return pred, exit_at


class StitchedFamily(nn.Module):
    """SN-Net: two anchors of equal depth (a narrow `small` and a wide `large`) and one linear stitching
    layer per position k = 1 .. depth-1, initialised by least squares on activations `xs` (N, d).
    forward(x, k): k = 0 is the large anchor, k = depth the small one, otherwise `stitched_logits` at k.
    Training samples one k per step and updates anchors and stitches together (they share weights)."""

    def __init__(self, small: ResidualMLP, large: ResidualMLP, xs: torch.Tensor) -> None:
        super().__init__()
        if small.depth != large.depth:
            raise ValueError(f"anchors must have equal depth, got {small.depth} and {large.depth}")
        self.small, self.large, self.depth = small, large, small.depth
        with torch.no_grad():
            hs, hl = small.states(xs), large.states(xs)
        self.stitches = nn.ModuleList(fit_stitch(hs[k], hl[k]) for k in range(1, self.depth))

    def forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return self.large(x)
        if k == self.depth:
            return self.small(x)
        return stitched_logits(self.small, self.large, self.stitches[k - 1], x, k)


def classification_loss(x: torch.Tensor, y: torch.Tensor) -> IndexLoss:
    """The loss `ptm.train` calls on a batch of indices i (B,): cross-entropy of model(x[i]) against y[i].
    x (N, d), y (N,)."""
    def loss(model: nn.Module, i: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x[i]), y[i])
    return loss


def once_for_all_loss(x: torch.Tensor, y: torch.Tensor, widths: Sequence[int], depths: Sequence[int],
                      gen: torch.Generator, n_random: int = 1, distill: float = 0.0) -> IndexLoss:
    """Once-for-all training's loss on a batch of indices i (B,): each call draws the step's sizes with
    `sample_sizes` (from `gen`) and returns `sub_network_loss` on x[i] (B, d), y[i] (B,)."""
    def loss(model: nn.Module, i: torch.Tensor) -> torch.Tensor:
        sizes = sample_sizes(widths, depths, gen, n_random=n_random)
        return sub_network_loss(model, x[i], y[i], sizes, distill=distill)
    return loss


def stitch_path_loss(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> IndexLoss:
    """SN-Net's training loss on a batch of indices i (B,): one path k ~ U{0 .. depth} of the
    `StitchedFamily` per step (drawn from `gen`), cross-entropy of family(x[i], k) against y[i]."""
    def loss(model: nn.Module, i: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(model.depth + 1, (1,), generator=gen))  # one path of the family per step
        return F.cross_entropy(model(x[i], k), y[i])
    return loss


def train_alone(d_in: int, n_classes: int, width: int, depth: int, loss_fn: IndexLoss,
                batch_fn: Callable[[torch.Generator], torch.Tensor], cfg: TrainConfig, profile: Profile, *,
                seed: int, examples_per_step: int, expand: int = 2) -> ResidualMLP:
    """A `ResidualMLP` of one size, initialised from torch.manual_seed(`seed`) and trained conventionally
    with `ptm.train` on `loss_fn` (e.g. `classification_loss`): (B, d_in) -> (B, n_classes)."""
    torch.manual_seed(seed)
    model = ResidualMLP(d_in, n_classes, width, depth, expand)
    train(model, batch_fn, loss_fn, cfg, profile, examples_per_step=examples_per_step)
    return model


def uniform_exit_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain average of every exit's cross-entropy (how thresholded exit heads are trained):
    logits (B, L, K), y (B,) -> scalar."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(logits.shape[1]))


def train_exits(feats: torch.Tensor, y: torch.Tensor, costs: torch.Tensor, lam: float | None, n_classes: int,
                batch_fn: Callable[[torch.Generator], torch.Tensor], cfg: TrainConfig, profile: Profile, *,
                seed: int, examples_per_step: int) -> ExitHeads:
    """`ExitHeads` on a frozen backbone's features feats (N, L, C) with labels y (N,), initialised from
    torch.manual_seed(`seed`). lam=None: heads only, on `uniform_exit_loss` (the thresholding baseline);
    else heads and gates jointly on JEI-DNN's `exit_loss` with per-exit costs (L,) and price `lam`."""
    torch.manual_seed(seed)
    heads = ExitHeads(feats.shape[1], feats.shape[2], n_classes)

    def loss(m: ExitHeads, i: torch.Tensor) -> torch.Tensor:
        logits, gates = m(feats[i])
        if lam is None:
            return uniform_exit_loss(logits, y[i])
        return exit_loss(logits, gates, y[i], costs, lam)

    train(heads, batch_fn, loss, cfg, profile, examples_per_step=examples_per_step)
    return heads


@torch.no_grad()
def exit_point(logits: torch.Tensor, exits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(average blocks executed, accuracy) when sample b exits at exits[b], exit l after block l:
    logits (B, L, K), exits (B,) int64, y (B,)."""
    pred = logits[torch.arange(len(exits)), exits].argmax(-1)
    return (exits + 1).float().mean().item(), (pred == y).float().mean().item()


def deployed_exits(model: ResidualMLP, heads: ExitHeads, x: torch.Tensor, y: torch.Tensor, **rule: float
                   ) -> tuple[float, float, float]:
    """Dynamic exits run as deployed (`run_with_exits` with `rule`: cut= or tau=) on x (B, d), y (B,):
    (accuracy, counted FLOPs per sample, relative error of the count against the FLOPs the exits taken
    imply: the stem for every sample, then block + head + gate for each sample still running)."""
    pred, exit_at = run_with_exits(model, heads, x, **rule)
    counted = counted_flops(lambda: run_with_exits(model, heads, x, **rule))
    width, n_classes = model.width, model.head.out_features
    head = 2 * width * n_classes  # one exit head
    gate = 2 * n_classes  # the gate's (b, K) x (K, 1) product, computed under either rule
    implied = len(x) * 2 * model.stem.in_features * width + sum(
        int((exit_at >= i).sum()) * (block_flops(width, model.expand) + head + gate) for i in range(model.depth))
    return (pred == y).float().mean().item(), counted / len(x), abs(counted - implied) / implied
