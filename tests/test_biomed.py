"""Tests of ptmlib.science.biomed: the ECG simulator, JEPA vs reconstruction, the MRI phantoms and the
multimodal masked autoencoder."""
import pytest
import torch

from ptmlib.objectives.selfsup import patchify
from ptmlib.science import biomed


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ ECG simulator

def test_detected_r_peaks_equal_the_beats_placed_in_the_window():
    labels = torch.arange(4).repeat(200)
    x, beats = biomed.simulate_ecg(labels, gen(), noise=0.0, wander=0.0)
    assert x.shape == (800, 400) and beats.shape == (800, biomed.MAX_BEATS)
    found = torch.tensor([len(p) for p in biomed.r_peaks(x)])
    assert (found == biomed.beats_in_window(beats, 400)).float().mean() > 0.99


def test_heart_rates_follow_the_rhythm():
    labels = torch.arange(4).repeat_interleave(500)
    x, beats = biomed.simulate_ecg(labels, gen(1), noise=0.0, wander=0.0)
    bpm = biomed.beats_in_window(beats, 400).float() * 60 / 4.0
    normal, tachy = bpm[labels == 0].mean(), bpm[labels == 1].mean()
    assert 65 < normal < 85 and 115 < tachy < 145  # 60-90 and 110-150 bpm (the window count is within one beat)


def test_atrial_fibrillation_is_irregular_and_an_ectopic_beat_is_premature():
    labels = torch.arange(4).repeat_interleave(300)
    rr, ectopic = biomed.rr_intervals(labels, gen(2))
    cv = (rr.std(1) / rr.mean(1))
    assert cv[labels == 2].mean() > 3 * cv[labels == 0].mean()
    assert (ectopic.sum(1) == (labels == 3).long()).all()  # one ectopic beat per ectopic record, none elsewhere
    early = rr[ectopic] / rr[labels == 3].median(1).values
    assert (early < 0.75).all()  # it comes early...
    assert torch.allclose(rr[ectopic.roll(1, 1)] + rr[ectopic], 2 * rr[ectopic] / 0.6, rtol=1e-5)  # ...and is compensated


def test_noise_is_additive_and_the_clean_part_is_shared():
    labels = torch.arange(4).repeat(10)
    clean, _ = biomed.simulate_ecg(labels, gen(3), noise=0.0)
    noisy, _ = biomed.simulate_ecg(labels, gen(3), noise=0.3)
    assert 0.27 < (noisy - clean).std() < 0.33


def test_patches_and_block_masks():
    x = torch.arange(2 * 400.0).reshape(2, 400)
    p = biomed.to_patches(x, 20)
    assert p.shape == (2, 20, 20) and torch.equal(p[1, 3], x[1, 60:80])
    with pytest.raises(ValueError):
        biomed.to_patches(x, 30)
    idx = biomed.block_mask(3, 5, 20, 2, 4, gen())
    assert idx.shape == (3, 5, 8) and idx.min() >= 0 and idx.max() < 20
    runs = idx.reshape(3, 5, 2, 4)
    assert (runs.diff(dim=-1) == 1).all()  # each block is contiguous


# ------------------------------------------------------------------ JEPA vs reconstruction

def test_standardised_targets_drop_what_the_position_alone_predicts():
    pos = torch.randn(1, 1, 10, 8) * 5  # a large position-only component, as position embeddings give
    h = pos + torch.randn(2, 64, 10, 8)
    out = biomed.standardise_targets(h)
    assert out.mean(1).abs().max() < 1e-5  # centred over the batch at every position
    assert torch.allclose(out.std(1), torch.ones(2, 10, 8), atol=1e-3)
    assert out.mean(1).abs().max() < 0.01 * h.mean(1).abs().max()  # the position's component is gone


def test_pretrainers_shapes_target_and_member_independence():
    torch.manual_seed(0)
    model = biomed.SignalPretrainers(2, 20, 20, 16, 1, 2)
    tokens = torch.randn(6, 20, 20)
    idx = biomed.block_mask(4, 6, 20, 2, 4, gen())
    jepa, recon = model.losses(tokens, idx)
    assert jepa.shape == recon.shape == (2,)
    jepa[0].backward()
    grads = model.encoder.read_in.weight.grad
    assert grads[0].abs().sum() > 0 and grads[1:].abs().sum() == 0  # member 0's loss moves member 0 only
    assert all(p.grad is None for p in model.target.parameters())  # the target encoder gets no gradient
    assert model.features(tokens).shape == (4, 6, 32)  # mean and std of C = 16


def test_target_update_is_an_exponential_moving_average():
    torch.manual_seed(0)
    model = biomed.SignalPretrainers(2, 20, 20, 16, 1, 2)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = model.target.read_in.weight.clone()
    model.update_target(0.75)
    expected = 0.75 * before + 0.25 * model.encoder.read_in.weight[:2]
    assert torch.allclose(model.target.read_in.weight, expected, atol=1e-6)
    model.update_target(0.0)
    assert torch.equal(model.target.read_in.weight, model.encoder.read_in.weight[:2])


# ------------------------------------------------------------------ MRI phantoms and the multimodal MAE

def test_tumour_tissues_follow_the_grade():
    labels = torch.arange(3).repeat_interleave(200)
    t = biomed.tissue_maps(labels, gen())
    has = lambda k: (t == k).flatten(1).any(1)  # noqa: E731
    assert not (has(5) | has(6) | has(7))[labels == 0].any()
    assert has(6)[labels > 0].float().mean() > 0.9 and not has(7)[labels == 1].any()
    assert has(7)[labels == 2].float().mean() > 0.9  # the enhancing rim marks high grade
    oedema = (t == 5).flatten(1).sum(1).float()
    assert oedema[labels == 2].mean() > 2 * oedema[labels == 1].mean()


def test_phantoms_follow_the_contrast_table():
    labels = torch.arange(3).repeat(4)
    t = biomed.tissue_maps(labels, gen(5))
    img = biomed.mri_phantoms(labels, gen(5), noise=0.0)  # same generator state: same tissues
    head = t > 0
    for m in range(4):
        ratio = img[:, m][head] / biomed.CONTRAST[m, t[head]]
        assert 0.8 <= ratio.min() and ratio.max() <= 1.2  # the table times a gain in [0.8, 1.2]
    assert (img.permute(1, 0, 2, 3)[:, ~head] == 0).all()  # background is 0 in every modality


def test_modality_tokens_layout():
    img = torch.randn(3, 4, 16, 16)
    tok = biomed.modality_tokens(img)
    assert tok.shape == (3, 16, 4, 16)
    assert torch.equal(tok[2, 5, 3], patchify(img[2, 3].reshape(1, 256), 16, 4)[0, 5])


def test_the_mae_cannot_see_hidden_cells():
    torch.manual_seed(0)
    mae = biomed.MultimodalMAE(2, 4, 16, 16, 16, 1, 2)
    tok = torch.randn(5, 16, 4, 16)
    hidden = biomed.absent(2, tok, (1, 3))
    assert hidden.shape == (2, 5, 16, 4) and hidden[..., 1].all() and not hidden[..., 0].any()
    changed = tok.clone()
    changed[:, :, [1, 3]] = torch.randn(5, 16, 2, 16)
    assert torch.allclose(mae.reconstruct(tok, hidden), mae.reconstruct(changed, hidden))
    assert torch.allclose(mae.features(tok, (1, 3)), mae.features(changed, (1, 3)))
    assert not torch.allclose(mae.features(tok), mae.features(changed))
    loss = mae.loss(tok, hidden)
    assert loss.shape == (2,)
    pred = mae.reconstruct(tok, hidden)
    expected = (pred - tok)[:, :, :, [1, 3]].pow(2).mean((1, 2, 3, 4))
    assert torch.allclose(loss, expected, rtol=1e-5)  # only hidden cells count


def test_r_squared_and_pooling():
    y = torch.randn(50, 8)
    assert biomed.r_squared(y, y) == pytest.approx(1.0)
    assert biomed.r_squared(y.mean(0, keepdim=True).expand_as(y), y) == pytest.approx(0.0, abs=1e-6)
    assert biomed.r_squared(torch.zeros_like(y) + 10, y) < 0
    h = torch.randn(2, 3, 7, 5)
    pooled = biomed.pool_tokens(h)
    assert pooled.shape == (2, 3, 10) and torch.allclose(pooled[..., :5], h.mean(2))
