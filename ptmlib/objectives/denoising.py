"""Pretraining objectives as data transforms: a batch of token ids -> what one decoder sees and predicts.

Every objective here produces an `LMBatch` for one decoder-only transformer:

    inputs  (B, L)  token ids fed to the model
    targets (B, L)  the token each position must predict, or IGNORE (-100) where there is no loss
    prefix  (B,)    position i may attend to j iff j <= i or j < prefix  (0: causal, L: bidirectional)

so causal LM, prefix LM, masked LM, T5 span corruption, UL2's mixture and the evaluation formats all
train and score with the same model and the same loss (`lm_loss`). This is UL2's own framing: a
"non-causal decoder" can run every denoiser, and the objective lives in the data, not the network.
Special ids (padding, [MASK], mode tokens, sentinels) come from `ptmlib.text`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmlib.text import EOS, MASK, MODE_R, MODE_S, MODE_X, N_SENTINELS, PAD, SENTINEL0

IGNORE = -100


@dataclass
class LMBatch:
    """Model inputs (B, L), per-position targets (B, L) with IGNORE, bidirectional prefix length (B,)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    prefix: torch.Tensor

    def scored(self) -> int:
        """Number of loss-bearing positions (the tokens this batch actually trains on)."""
        return int((self.targets != IGNORE).sum())


def attention_mask(prefix: torch.Tensor, L: int) -> torch.Tensor:
    """(B, 1, L, L) boolean mask, True where query i may attend to key j: j <= i or j < prefix."""
    i = torch.arange(L, device=prefix.device)
    allowed = (i[None, :] <= i[:, None])[None] | (i[None, None, :] < prefix[:, None, None])
    return allowed[:, None]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) over positions whose target is not IGNORE; logits (B, L, V)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def _with_mode(inputs: torch.Tensor, targets: torch.Tensor, prefix: torch.Tensor, mode: int | None) -> LMBatch:
    if mode is None:
        return LMBatch(inputs, targets, prefix)
    B = inputs.shape[0]
    col = torch.full((B, 1), mode, dtype=inputs.dtype, device=inputs.device)
    ign = torch.full((B, 1), IGNORE, dtype=targets.dtype, device=targets.device)
    return LMBatch(torch.cat([col, inputs], 1), torch.cat([ign, targets], 1), prefix + 1)


def causal_lm(ids: torch.Tensor) -> LMBatch:
    """Next-token prediction everywhere: inputs ids[:, :-1], targets ids[:, 1:], causal attention."""
    B = ids.shape[0]
    return LMBatch(ids[:, :-1], ids[:, 1:], torch.zeros(B, dtype=torch.int64, device=ids.device))


def prefix_lm(ids: torch.Tensor, split: torch.Tensor | int, mode: int | None = None) -> LMBatch:
    """Prefix LM: tokens before `split` (per row, or one int) are a bidirectional context; only the
    suffix ids[split:] is predicted, left to right. An optional mode token is prepended (UL2's [S])."""
    B, T = ids.shape
    split = torch.as_tensor(split, device=ids.device).expand(B)
    targets = ids[:, 1:].clone()
    pos = torch.arange(T - 1, device=ids.device)
    targets[pos[None, :] < (split[:, None] - 1)] = IGNORE  # position i predicts ids[i + 1]
    return _with_mode(ids[:, :-1], targets, split.clone(), mode)


def subsample_scored(batch: LMBatch, n: int, gen: torch.Generator) -> LMBatch:
    """Keep the loss on a uniformly random n of each row's scored positions (IGNORE elsewhere): the same
    inputs and attention with sparser supervision, e.g. a causal LM scored on as many tokens as an MLM."""
    scored = batch.targets != IGNORE
    if int(scored.sum(1).min()) < n:
        raise ValueError(f"a row has fewer than {n} scored positions")
    u = torch.rand(scored.shape, generator=gen, device=gen.device).to(scored.device)
    keep_at = torch.where(scored, u, torch.full_like(u, -1.0)).topk(n, dim=1).indices  # (B, n)
    keep = torch.zeros_like(scored).scatter_(1, keep_at, True)
    return LMBatch(batch.inputs, torch.where(keep, batch.targets, torch.full_like(batch.targets, IGNORE)), batch.prefix)


def random_split(B: int, T: int, gen: torch.Generator, low: float = 0.2, high: float = 0.8) -> torch.Tensor:
    """Prefix lengths uniform in [low*T, high*T] (inclusive), one per row."""
    return torch.randint(max(1, int(low * T)), int(high * T) + 1, (B,), generator=gen, device=gen.device)


def mlm(ids: torch.Tensor, rate: float, vocab_size: int, gen: torch.Generator, keep: float = 0.1,
        random: float = 0.1, first_regular: int = SENTINEL0 + N_SENTINELS) -> LMBatch:
    """BERT's masked LM: exactly round(rate * T) positions per row are chosen; of those, a fraction
    1 - keep - random become [MASK], `random` become a random regular token, `keep` stay unchanged.
    Targets are the original ids at the chosen positions; attention is fully bidirectional."""
    B, T = ids.shape
    n = max(1, round(rate * T))
    order = torch.rand(B, T, generator=gen, device=gen.device).argsort(1)
    chosen = torch.zeros(B, T, dtype=torch.bool, device=ids.device)
    chosen.scatter_(1, order[:, :n].to(ids.device), True)
    u = torch.rand(B, T, generator=gen, device=gen.device).to(ids.device)
    inputs = ids.clone()
    inputs[chosen & (u < 1 - keep - random)] = MASK
    swap = chosen & (u >= 1 - keep - random) & (u < 1 - keep)
    rand_ids = torch.randint(first_regular, vocab_size, (B, T), generator=gen, device=gen.device).to(ids.device)
    inputs[swap] = rand_ids[swap]
    targets = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    return LMBatch(inputs, targets, torch.full((B,), T, dtype=torch.int64, device=ids.device))


def _random_partition(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """k positive integers summing to n, uniformly over compositions (T5's `_random_segmentation`)."""
    cuts = torch.randperm(n - 1, generator=gen, device=gen.device)[:k - 1].sort().values + 1
    edges = torch.cat([torch.zeros(1, dtype=torch.int64, device=cuts.device), cuts,
                       torch.tensor([n], device=cuts.device)])
    return edges.diff().cpu()


def span_noise_mask(T: int, density: float, mean_span: float, gen: torch.Generator) -> torch.Tensor:
    """T5's random spans: a (T,) boolean mask with exactly round(density*T) noise tokens in exactly
    round(noise/mean_span) spans (at least 1 of each), alternating with non-noise runs, starting with
    a non-noise run (so the first token is never masked)."""
    n_noise = min(max(1, round(density * T)), T - 1)
    n_spans = max(1, min(round(n_noise / mean_span), T - n_noise))
    noise = _random_partition(n_noise, n_spans, gen)
    keep = _random_partition(T - n_noise, n_spans, gen)
    lengths = torch.stack([keep, noise], 1).flatten()  # keep_0, noise_0, keep_1, noise_1, ...
    is_noise = torch.arange(2 * n_spans) % 2 == 1
    return torch.repeat_interleave(is_noise, lengths)


def corrupt_spans(row: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row (T,) and its noise mask -> (encoder input with one sentinel per span,
    target = sentinel_k span_k ... EOS). Raises if there are more spans than sentinels."""
    starts = noise & ~torch.cat([torch.zeros(1, dtype=torch.bool), noise[:-1]])
    span_id = starts.cumsum(0) - 1  # index of the span each noise token belongs to
    if int(starts.sum()) > N_SENTINELS:
        raise ValueError(f"{int(starts.sum())} spans but only {N_SENTINELS} sentinels")
    sentinel = SENTINEL0 + span_id
    enc = torch.where(starts, sentinel, row)[~noise | starts]
    tgt_tokens, tgt_is_sentinel = [], []
    for k in range(int(starts.sum())):
        tgt_tokens += [SENTINEL0 + k] + row[noise & (span_id == k)].tolist()
    dec = torch.tensor(tgt_tokens + [EOS], dtype=row.dtype)
    return enc, dec


def uncorrupt_spans(enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    """Inverse of `corrupt_spans`: put each span back in place of its sentinel."""
    spans: dict[int, list[int]] = {}
    current = None
    for t in dec.tolist():
        if SENTINEL0 <= t < SENTINEL0 + N_SENTINELS:
            current = t
            spans[current] = []
        elif t == EOS:
            break
        elif current is not None:
            spans[current].append(t)
    out: list[int] = []
    for t in enc.tolist():
        out += spans[t] if t in spans else [t]
    return torch.tensor(out, dtype=enc.dtype)


def _pack(encs: list[torch.Tensor], decs: list[torch.Tensor], mode: int | None, score_sentinels: bool = True) -> LMBatch:
    """Decoder-only packing of (encoder input, target) pairs: [mode] enc dec, the prefix = [mode] enc,
    loss on dec; rows right-padded with PAD to a common length."""
    head = [] if mode is None else [mode]
    seqs = [torch.cat([torch.tensor(head, dtype=e.dtype), e, d]) for e, d in zip(encs, decs)]
    L = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), L), PAD, dtype=torch.int64)
    targets = torch.full((len(seqs), L), IGNORE, dtype=torch.int64)
    prefix = torch.zeros(len(seqs), dtype=torch.int64)
    for b, (s, e) in enumerate(zip(seqs, encs)):
        p = len(head) + len(e)
        inputs[b, :len(s) - 1] = s[:-1]
        targets[b, p - 1:len(s) - 1] = s[p:]
        prefix[b] = p
    if not score_sentinels:
        special = (targets >= SENTINEL0) & (targets < SENTINEL0 + N_SENTINELS) | (targets == EOS)
        targets[special] = IGNORE
    return LMBatch(inputs, targets, prefix)


def span_corruption(ids: torch.Tensor, gen: torch.Generator, density: float = 0.15, mean_span: float = 3.0,
                    mode: int | None = None, noise: torch.Tensor | None = None,
                    score_sentinels: bool = True) -> LMBatch:
    """T5's span corruption in decoder-only form: [mode] corrupted-input | <s0> span0 <s1> span1 ... EOS.
    `noise` (B, T) fixes the masks (for evaluation); otherwise each row draws `span_noise_mask`."""
    rows = ids.cpu()
    masks = noise.cpu() if noise is not None else [span_noise_mask(rows.shape[1], density, mean_span, gen)
                                                    for _ in range(len(rows))]
    pairs = [corrupt_spans(r, m) for r, m in zip(rows, masks)]
    out = _pack([e for e, _ in pairs], [d for _, d in pairs], mode, score_sentinels)
    return LMBatch(out.inputs.to(ids.device), out.targets.to(ids.device), out.prefix.to(ids.device))


# UL2's mixture of denoisers, scaled to short sequences: R = regular span corruption, X = extreme
# (dense and long spans), S = sequential (prefix LM). Each row draws one denoiser and its mode token.
UL2_DENOISERS = {
    "R": dict(density=0.15, mean_span=3.0),
    "X": dict(density=0.5, mean_span=8.0),
    "S": dict(),
}
UL2_MODES = {"R": MODE_R, "X": MODE_X, "S": MODE_S}


def pad_batches(parts: list[LMBatch]) -> LMBatch:
    """Stack batches of different lengths: right-pad inputs with PAD and targets with IGNORE."""
    L = max(p.inputs.shape[1] for p in parts)
    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(x, (0, L - x.shape[1]), value=value)
    return LMBatch(torch.cat([pad(p.inputs, PAD) for p in parts]), torch.cat([pad(p.targets, IGNORE) for p in parts]),
                   torch.cat([p.prefix for p in parts]))


def ul2(ids: torch.Tensor, gen: torch.Generator, probs: tuple[float, float, float] = (0.4, 0.4, 0.2)) -> LMBatch:
    """UL2's mixture: each row is R, X or S (probabilities `probs`, in that order) with its mode token.
    Rows are grouped by denoiser, so the output's row order is R rows, X rows, S rows."""
    B, T = ids.shape
    which = torch.multinomial(torch.tensor(probs), B, replacement=True, generator=gen)  # gen must be a CPU generator
    parts = []
    for k, name in enumerate(("R", "X", "S")):
        rows = ids[which.to(ids.device) == k]
        if len(rows) == 0:
            continue
        if name == "S":
            parts.append(prefix_lm(rows, random_split(len(rows), T, gen).to(ids.device), mode=MODE_S))
        else:
            parts.append(span_corruption(rows, gen, mode=UL2_MODES[name], **UL2_DENOISERS[name]))
    return pad_batches(parts)


def replace_tokens(ids: torch.Tensor, chosen: torch.Tensor, gen_logits: torch.Tensor,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ELECTRA's corruption: at the n `chosen` positions (B, T) put a token sampled from the generator's
    logits there, (n, V) in the order of `ids[chosen]` (inverse-CDF sampling, no gradient). Returns the
    corrupted ids and the labels `is_replaced` (B, T) - a sample that equals the original counts as
    original, as in ELECTRA."""
    with torch.no_grad():
        cdf = F.softmax(gen_logits.float(), dim=-1).cumsum(-1)  # (n, V)
        u = torch.rand(cdf.shape[0], 1, generator=gen, device=gen.device).to(cdf.device) * cdf[:, -1:]
        sample = torch.searchsorted(cdf, u).squeeze(1).clamp_(max=cdf.shape[1] - 1)
    corrupted = ids.clone()
    corrupted[chosen] = sample
    return corrupted, corrupted != ids


# Evaluation formats: the same held-out text, presented to each objective the way it was trained.

def suffix_eval(ids: torch.Tensor, split: int, style: str, n_positions: int | None = None) -> LMBatch:
    """Score the suffix ids[:, split:] given the prefix, left to right, in each objective's format.

    style: 'causal' (causal attention), 'prefix' / 'S' / 'R' (bidirectional prefix; 'S' and 'R' add that
    mode token - 'R' is the wrong one), 'span' (the suffix as one masked span after sentinel <s0>),
    'mlm' (for each of `n_positions` suffix positions p, the input is ids[:p] + [MASK] and the target
    ids[p]: one row per position, as a masked LM can only fill blanks).
    """
    B, T = ids.shape
    if style == "causal":
        full = prefix_lm(ids, split)
        return LMBatch(full.inputs, full.targets, torch.zeros_like(full.prefix))
    if style in ("prefix", "S", "R"):
        return prefix_lm(ids, split, mode={"prefix": None, "S": MODE_S, "R": MODE_R}[style])
    if style == "span":
        s0 = torch.full((B, 1), SENTINEL0, dtype=ids.dtype, device=ids.device)
        encs = [torch.cat([r[:split], s0[0]]) for r in ids.cpu()]
        decs = [torch.cat([s0[0], r[split:]]) for r in ids.cpu()]
        out = _pack(encs, decs, None, score_sentinels=False)
        return LMBatch(out.inputs.to(ids.device), out.targets.to(ids.device), out.prefix.to(ids.device))
    if style == "mlm":
        positions = range(split, T) if n_positions is None else torch.linspace(split, T - 1, n_positions).long().tolist()
        parts = []
        for p in positions:
            inputs = torch.cat([ids[:, :p], torch.full((B, 1), MASK, dtype=ids.dtype, device=ids.device)], 1)
            targets = torch.full_like(inputs, IGNORE)
            targets[:, p] = ids[:, p]
            parts.append(LMBatch(inputs, targets, torch.full((B,), p + 1, dtype=torch.int64, device=ids.device)))
        return pad_batches(parts)
    raise ValueError(f"unknown style {style!r}; allowed: causal, prefix, S, R, span, mlm")


def infill_eval(ids: torch.Tensor, start: int, length: int, style: str) -> LMBatch:
    """Score the span ids[:, start:start+length] in each objective's format.

    'causal': left context only; 'prefix': the left context bidirectional, the span left to right;
    'mlm': the span replaced by [MASK]s, both sides visible, all span tokens predicted at once;
    'span' / 'R': T5 format with the span as the only noise span (sentinels not scored; 'R' adds UL2's
    [R] mode token).
    """
    B, T = ids.shape
    if style in ("causal", "prefix"):
        out = prefix_lm(ids[:, :start + length], start)
        return LMBatch(out.inputs, out.targets, out.prefix if style == "prefix" else torch.zeros_like(out.prefix))
    noise = torch.zeros(B, T, dtype=torch.bool, device=ids.device)
    noise[:, start:start + length] = True
    if style == "mlm":
        inputs = torch.where(noise, torch.full_like(ids, MASK), ids)
        return LMBatch(inputs, torch.where(noise, ids, torch.full_like(ids, IGNORE)),
                       torch.full((B,), T, dtype=torch.int64, device=ids.device))
    if style in ("span", "R"):
        return span_corruption(ids, torch.Generator(), noise=noise, mode=MODE_R if style == "R" else None,
                               score_sentinels=False)
    raise ValueError(f"unknown style {style!r}; allowed: causal, prefix, mlm, span, R")


def seq2seq_prefix_lm(ids: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix LM for an encoder-decoder: the encoder reads ids[:, :split], the decoder predicts
    ids[:, split:] (the labels; the model shifts them right behind its start token)."""
    return ids[:, :split].contiguous(), ids[:, split:].contiguous()
