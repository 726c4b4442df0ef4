"""ELECTRA pairs: sharing modes route gradients as defined, corruption statistics, helper closed forms."""
import math

import pytest
import torch

from ptmlib.objectives import rtd
from ptmlib.text import PAD

V, T = 60, 16


def pairs(seed=0):
    torch.manual_seed(seed)
    return rtd.ElectraPairs(["NES", "ES", "GDES"], V, 16, 1, 2)


def ids(B=4, seed=0):
    return torch.randint(22, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_disc_tables_follow_the_sharing_modes():
    m = pairs()
    table = m.disc_table()
    assert torch.equal(table[0], m.disc.embed[0])
    assert torch.equal(table[1], m.gen.embed[1])
    assert torch.equal(table[2], m.gen.embed[2])  # E_delta starts at zero
    with torch.no_grad():
        m.disc.embed[2] += 1.0
    assert torch.allclose(m.disc_table()[2], m.gen.embed[2] + 1.0)


def test_discriminator_gradient_reaches_the_generator_table_only_under_es():
    m = pairs()
    out = m.losses(ids(), torch.Generator().manual_seed(1))
    g_table = torch.autograd.grad(out.discriminator.sum(), m.gen.embed, retain_graph=True)[0]
    assert g_table[0].abs().max() == 0 and g_table[2].abs().max() == 0  # NES, GDES: stop-gradient / no link
    assert g_table[1].abs().max() > 0  # ES: the tug of war is possible
    d_table = torch.autograd.grad(out.discriminator.sum(), m.disc.embed)[0]
    assert d_table[0].abs().max() > 0 and d_table[2].abs().max() > 0 and d_table[1].abs().max() == 0


def test_replacements_only_at_masked_positions():
    m = pairs()
    out = m.losses(ids(B=50), torch.Generator().manual_seed(2))
    chosen = round(0.15 * T) / T
    assert (out.replaced <= chosen + 1e-6).all() and (out.replaced > 0).all()
    assert (out.generator > 0).all() and (out.discriminator > 0).all()


def test_gradient_cosine_is_a_cosine_and_zero_without_a_link():
    m = pairs()
    out = m.losses(ids(), torch.Generator().manual_seed(1))
    flat, rows = rtd.gradient_cosine(m, out, 1, 50.0)
    assert -1 <= flat <= 1 and -1 <= rows <= 1
    flat_gdes, rows_gdes = rtd.gradient_cosine(m, out, 2, 50.0)
    assert flat_gdes == 0.0 and math.isnan(rows_gdes)
    again = rtd.gradient_cosine(m, out, 1, 5.0)  # scaling one gradient leaves the angle unchanged
    assert abs(again[0] - flat) < 1e-3 * abs(flat) + 1e-9 and abs(again[1] - rows) < 1e-3 * abs(rows) + 1e-9


def test_mean_pairwise_cosine_closed_forms():
    theta = 0.7
    table = torch.tensor([[1.0, 0.0], [math.cos(theta), math.sin(theta)], [2.0, 0.0]])
    assert abs(rtd.mean_pairwise_cosine(table, torch.tensor([0, 1])) - math.cos(theta)) < 1e-6
    assert abs(rtd.mean_pairwise_cosine(table, torch.tensor([0, 2])) - 1.0) < 1e-6
    assert abs(rtd.mean_pairwise_cosine(torch.eye(5), torch.arange(5))) < 1e-7


def test_experiment_records_the_tug_only_while_training_and_features_ignore_padding():
    torch.manual_seed(0)
    exp = rtd.RTDExperiment(V, 16, 1, 2, tug_every=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        exp.loss(ids(), g).backward()
    assert [t[0] for t in exp.tug] == [0, 2]
    exp.eval()
    exp.loss(ids(), g)
    assert len(exp.tug) == 2
    x = ids(B=3)
    padded = torch.cat([x, torch.full((3, 5), PAD)], 1)
    assert torch.allclose(exp.features(x), exp.features(padded), atol=1e-5)
    assert exp.features(x).shape == (4, 3, 16)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown sharing modes"):
        rtd.ElectraPairs(["NES", "shared"], V, 16, 1, 2)


def test_some_head_prefers_the_neighbours_at_initialisation():
    from ptmlib.ensemble import alibi_mask

    m = pairs()
    T_chapter = 64
    for model in (m.gen, m.disc):
        # at initialisation q.k is ~0, so the attention weights are the softmax of the ALiBi bias alone
        weights = alibi_mask(model.slopes, T_chapter, None, False, torch.device("cpu"))[0].softmax(-1)  # (H, T, T)
        t = T_chapter // 2
        on_neighbours = weights[:, t, t - 1] + weights[:, t, t + 1]  # (H,)
        assert float(on_neighbours.max()) > 0.25  # a quarter of the attention on 2 of 64 tokens (0.07 with slopes 1/16)
