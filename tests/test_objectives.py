"""Objective transforms: exact corruption statistics, and every target reconstructs the input."""
import pytest
import torch
import torch.nn.functional as F

from ptmlib.objectives import denoising as O
from ptmlib.text import EOS, MASK, MODE_R, MODE_S, N_SENTINELS, PAD, SENTINEL0

V = 300
FIRST = SENTINEL0 + N_SENTINELS


def ids(B=8, T=64, seed=0):
    return torch.randint(FIRST, V, (B, T), generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_attention_mask_is_causal_plus_a_bidirectional_prefix():
    m = O.attention_mask(torch.tensor([0, 3, 5]), 5)[:, 0]
    for b, p in enumerate([0, 3, 5]):
        for i in range(5):
            for j in range(5):
                assert bool(m[b, i, j]) == (j <= i or j < p)


def test_lm_loss_matches_cross_entropy_on_scored_positions():
    logits, t = torch.randn(2, 5, 7), torch.tensor([[1, -100, 3, 4, -100], [0, 0, -100, 6, 2]])
    keep = t != -100
    assert torch.allclose(O.lm_loss(logits, t), F.cross_entropy(logits[keep], t[keep]))


def test_causal_and_prefix_lm_targets_are_the_next_tokens():
    x = ids()
    c = O.causal_lm(x)
    assert torch.equal(c.targets, x[:, 1:]) and (c.prefix == 0).all() and c.scored() == 8 * 63
    split = torch.arange(8) * 5 + 10
    p = O.prefix_lm(x, split)
    for b in range(8):
        s = int(split[b])
        assert torch.equal(p.targets[b][p.targets[b] != -100], x[b, s:])  # exactly the suffix, in order
        assert int(p.prefix[b]) == s
    pm = O.prefix_lm(x, 20, mode=MODE_S)
    assert (pm.inputs[:, 0] == MODE_S).all() and (pm.prefix == 21).all()
    assert torch.equal(pm.targets[:, 1:], O.prefix_lm(x, 20).targets)


def test_subsample_scored_keeps_n_random_scored_positions_per_row():
    x, g = ids(), torch.Generator().manual_seed(0)
    p = O.prefix_lm(x, torch.arange(8) * 5 + 10)  # rows with 54 down to 19 scored positions
    s = O.subsample_scored(p, 19, g)
    assert torch.equal(s.inputs, p.inputs) and torch.equal(s.prefix, p.prefix)
    kept = s.targets != -100
    assert (kept.sum(1) == 19).all() and s.scored() == 8 * 19
    assert not (kept & (p.targets == -100)).any()  # only positions that were scored
    assert torch.equal(s.targets[kept], p.targets[kept])  # with their own targets
    assert kept[7].sum() == (p.targets[7] != -100).sum()  # the row with exactly 19 keeps all of them
    freq = torch.stack([O.subsample_scored(O.causal_lm(x), 21, g).targets != -100 for _ in range(300)]).float().mean(0)
    assert (freq - 21 / 63).abs().max() < 0.1  # uniform over the 63 next-token positions
    with pytest.raises(ValueError):
        O.subsample_scored(p, 20, g)


def test_mlm_masks_an_exact_fraction_with_80_10_10():
    x = ids(B=400, T=50)
    b = O.mlm(x, 0.3, V, gen())
    chosen = b.targets != -100
    assert (chosen.sum(1) == 15).all()  # round(0.3 * 50) per row, exactly
    assert torch.equal(b.targets[chosen], x[chosen])
    assert torch.equal(b.inputs[~chosen], x[~chosen])
    masked = (b.inputs[chosen] == MASK).float().mean()
    kept = (b.inputs[chosen] == x[chosen]).float().mean()
    assert abs(float(masked) - 0.8) < 0.015 and abs(float(kept) - 0.1 - 0.1 / V) < 0.015
    assert (b.inputs[chosen] >= FIRST).logical_or(b.inputs[chosen] == MASK).all()  # random tokens are regular


@pytest.mark.parametrize("T,density,mean_span", [(64, 0.15, 3.0), (64, 0.5, 8.0), (100, 0.3, 1.0), (20, 0.15, 3.0)])
def test_span_noise_mask_has_exact_noise_and_span_counts(T, density, mean_span):
    for s in range(20):
        m = O.span_noise_mask(T, density, mean_span, gen(s))
        n_noise = max(1, round(density * T))
        starts = m & ~torch.cat([torch.zeros(1, dtype=torch.bool), m[:-1]])
        assert len(m) == T and int(m.sum()) == n_noise and not m[0]
        assert int(starts.sum()) == max(1, round(n_noise / mean_span))


def test_span_lengths_average_the_requested_mean():
    lengths = []
    for s in range(200):
        m = O.span_noise_mask(64, 0.15, 3.0, gen(s))
        runs = torch.cat([torch.tensor([0]), m.int(), torch.tensor([0])]).diff()
        lengths += ((runs == -1).nonzero() - (runs == 1).nonzero()).flatten().tolist()
    assert abs(sum(lengths) / len(lengths) - 10 / 3) < 1e-9  # 10 noise tokens in 3 spans, every time


def test_span_corruption_round_trips_through_the_packed_batch():
    x = ids(B=6)
    b = O.span_corruption(x, gen(), density=0.3, mean_span=3.0, mode=MODE_R)
    for r in range(6):
        p = int(b.prefix[r])
        assert int(b.inputs[r, 0]) == MODE_R
        enc = b.inputs[r, 1:p]
        dec = b.targets[r][b.targets[r] != -100]
        assert int(dec[0]) == SENTINEL0 and int(dec[-1]) == EOS
        assert torch.equal(O.uncorrupt_spans(enc, dec), x[r])


def test_ul2_draws_each_denoiser_with_its_mode_token():
    x = ids(B=600, T=64)
    b = O.ul2(x, gen(), probs=(0.5, 0.3, 0.2))
    modes = b.inputs[:, 0]
    freq = torch.stack([(modes == m).float().mean() for m in (MODE_R, 5, MODE_S)])
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.06)
    assert (b.inputs[b.targets == -100] != -100).all() and b.scored() > 0


def test_replace_tokens_samples_from_the_generator_and_labels_real_changes():
    x = ids(B=4, T=10)
    chosen = torch.zeros(4, 10, dtype=torch.bool)
    chosen[:, ::2] = True
    logits = torch.full((4, 10, V), -1e9)
    logits[..., 100] = 0.0  # the generator always proposes token 100
    x[0, 0] = 100
    c, rep = O.replace_tokens(x, chosen, logits[chosen], gen())
    assert (c[chosen] == 100).all() and torch.equal(c[~chosen], x[~chosen])
    assert torch.equal(rep, chosen & (x != 100)) and not rep[0, 0]
    logits = torch.full((2000, 1, V), -1e9)
    logits[..., [50, 60]] = 0.0
    c, _ = O.replace_tokens(torch.zeros(2000, 1, dtype=torch.long), torch.ones(2000, 1, dtype=torch.bool), logits[:, 0], gen())
    assert abs(float((c == 50).float().mean()) - 0.5) < 0.04 and ((c == 50) | (c == 60)).all()


@pytest.mark.parametrize("style", ["causal", "prefix", "S", "R", "span"])
def test_suffix_eval_scores_exactly_the_suffix(style):
    x = ids(B=3, T=40)
    b = O.suffix_eval(x, 25, style)
    for r in range(3):
        assert torch.equal(b.targets[r][b.targets[r] != -100], x[r, 25:])


def test_mlm_suffix_eval_never_shows_the_future():
    x = ids(B=2, T=30)
    b = O.suffix_eval(x, 20, "mlm", n_positions=4)
    assert b.scored() == 8
    for r in range(b.inputs.shape[0]):
        p = int((b.targets[r] != -100).nonzero())
        assert int(b.inputs[r, p]) == MASK and (b.inputs[r, p + 1:] == PAD).all()
        assert int(b.prefix[r]) == p + 1


@pytest.mark.parametrize("style", ["causal", "prefix", "mlm", "span", "R"])
def test_infill_eval_scores_exactly_the_span(style):
    x = ids(B=3, T=40)
    b = O.infill_eval(x, 10, 6, style)
    for r in range(3):
        assert torch.equal(b.targets[r][b.targets[r] != -100], x[r, 10:16])
    if style == "mlm":
        assert (b.inputs[:, 10:16] == MASK).all() and torch.equal(b.inputs[:, 16:], x[:, 16:])
