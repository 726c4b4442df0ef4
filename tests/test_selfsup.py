"""ptmlib.objectives.selfsup: patches and masks, Selfie's choice, TERA's alterations, energy-based prediction."""
import math

import pytest
import torch
from torch import nn

from ptmlib.data import digits
from ptmlib.metrics import count_params
from ptmlib.objectives import selfsup


def test_patchify_cuts_row_major_tiles_and_inverts():
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 64)
    p = selfsup.patchify(x, 8, 4)  # (2, 4, 16)
    img = x.reshape(2, 8, 8)
    assert p.shape == (2, 4, 16)
    assert torch.equal(p[:, 0], img[:, :4, :4].reshape(2, 16))  # top-left
    assert torch.equal(p[:, 1], img[:, :4, 4:].reshape(2, 16))  # top-right
    assert torch.equal(p[:, 2], img[:, 4:, :4].reshape(2, 16))  # bottom-left
    assert torch.equal(selfsup.unpatchify(p, 4), x)
    assert torch.equal(selfsup.unpatchify(selfsup.patchify(x, 8, 2), 2), x)
    with pytest.raises(ValueError):
        selfsup.patchify(x, 8, 3)


def test_random_mask_draws_distinct_positions_and_hide_zeroes_exactly_them():
    gen = torch.Generator().manual_seed(0)
    idx = selfsup.random_mask(3, 5, 16, 4, gen)  # (3, 5, 4)
    assert idx.shape == (3, 5, 4) and idx.min() >= 0 and idx.max() < 16
    assert all(len(set(row.tolist())) == 4 for row in idx.reshape(-1, 4))
    tokens = torch.rand(3, 5, 16, 2) + 1  # no zeros of their own
    z = selfsup.hide(tokens, idx)  # (3, 5, 16, 3)
    flag = z[..., -1]
    assert flag.sum() == 3 * 5 * 4
    assert torch.equal(flag.bool(), (z[..., :2] == 0).all(-1))  # zeroed exactly where flagged
    assert torch.equal(selfsup.gather_tokens(tokens, idx)[0, 0, 0], tokens[0, 0, idx[0, 0, 0]])


def test_selfie_members_are_independent():
    torch.manual_seed(0)
    model = selfsup.MaskedPatchModels(2, 16, 4, 16, n_layer=1, n_head=2)
    tokens = selfsup.patchify(digits(None, "test")[0][:8], 8, 4)
    idx = selfsup.random_mask(4, 8, 4, 1, torch.Generator().manual_seed(1))
    choice, recon = model.losses(tokens, idx)
    assert choice.shape == recon.shape == (2,)
    choice[0].backward()  # member 0's loss must not reach members 1..3
    w = model.pool.read_in.weight.grad  # (4, C+1, C)
    assert w[0].abs().sum() > 0 and w[1:].abs().sum() == 0


def test_selfie_learns_to_pick_the_right_patch():
    torch.manual_seed(0)
    x = digits(None, "train")[0]
    tokens = selfsup.patchify(x, 8, 4)
    model = selfsup.MaskedPatchModels(1, 16, 4, 32, n_layer=1, n_head=2)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        rows = torch.randint(0, len(tokens), (64,), generator=gen)
        choice, recon = model.losses(tokens[rows], selfsup.random_mask(2, 64, 4, 1, gen))
        opt.zero_grad()
        (choice.sum() + 10 * recon.sum()).backward()
        opt.step()
    test = selfsup.patchify(digits(None, "test")[0][:64], 8, 4)
    with torch.no_grad():
        acc = model.choice_accuracy(test, selfsup.random_mask(2, 64, 4, 1, gen))
        choice, recon = model.losses(test, selfsup.random_mask(2, 64, 4, 1, gen))
    assert acc.item() > 5 / 64  # chance is 1/64
    assert choice.item() < math.log(64) - 0.5
    assert recon.item() < test.var().item()  # better than predicting the mean pixel


def test_few_label_probe_separates_informative_from_noise_features():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(30)
    onehot = torch.nn.functional.one_hot(y, 10).float() + 0.01 * torch.randn(300, 10, generator=gen)
    noise = torch.randn(300, 10, generator=gen)
    good = selfsup.few_label_probe(onehot[:200], y[:200], onehot[200:], y[200:], 2, 3, torch.Generator().manual_seed(1))
    bad = selfsup.few_label_probe(noise[:200], y[:200], noise[200:], y[200:], 2, 3, torch.Generator().manual_seed(1))
    assert good == 1.0
    assert bad < 0.3


def test_toy_speech_has_a_global_speaker_and_local_phones():
    gen = torch.Generator().manual_seed(0)
    spec, phone, speaker = selfsup.toy_speech(400, 24, 16, 4, 8, 4, gen, speaker_gain=0.5, noise=0.0)
    assert spec.shape == (400, 24, 16) and phone.shape == (400, 24) and speaker.shape == (400,)
    assert torch.equal(phone[:, 0::4], phone[:, 3::4])  # constant inside a segment of 4 frames
    # without noise, the spectrum minus the phones' peaks is the speaker's envelope, the same in every frame
    rest = spec - spec[:, :1]  # frames differ only by their phones
    same_phone = phone == phone[:, :1]
    assert rest[same_phone].abs().max() < 1e-6
    a, b = (spec[speaker == s].mean((0, 1)) for s in (0, 1))
    assert (a - b).abs().max() > 0.1  # speakers differ in their envelope
    noisy = selfsup.toy_speech(400, 24, 16, 4, 8, 4, torch.Generator().manual_seed(0), speaker_gain=0.5, noise=0.6)[0]
    assert abs((noisy - spec).std().item() - 0.6) < 0.02


def test_alterations_change_what_they_say_and_weight_marks_it():
    gen = torch.Generator().manual_seed(0)
    spec = torch.rand(64, 24, 16) + 1  # no zeros of its own
    out, w = selfsup.alter(spec, ("time",), gen, time_frac=0.15, block=3)
    frames = (out == 0).all(-1)  # (B, T) frames hidden completely
    assert torch.equal(w.bool(), (out == 0))
    assert torch.equal(frames, w.bool().any(-1))  # time alteration hides whole frames
    assert 0.05 < frames.float().mean() < 0.25
    out, w = selfsup.alter(spec, ("freq",), gen, max_freq=4)
    bins = (out == 0).all(1)  # (B, F) bins hidden in every frame
    assert torch.equal(bins, (out == 0).any(1)) and bins.sum(-1).max() <= 4
    assert torch.equal(w.bool(), out == 0)
    out, w = selfsup.alter(spec, ("mag",), gen, noise_std=0.5)
    assert w.min() == 1 and abs((out - spec).std().item() - 0.5) < 0.01
    out, w = selfsup.alter(spec, (), gen)
    assert torch.equal(out, spec) and w.sum() == 0


def test_alteration_models_reconstruct_better_after_training():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    spec = selfsup.toy_speech(512, 12, 8, 4, 4, 3, gen, noise=0.1)[0]
    model = selfsup.AlterationModels([("time",), ("mag",)], 8, 12, 16, 1, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(spec[:64], torch.Generator().manual_seed(1)).item()
    for i in range(120):
        loss = model.loss(spec[torch.randint(0, 512, (32,), generator=gen)], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.loss(spec[:64], torch.Generator().manual_seed(1)).item() < 0.6 * first
    assert model.features(spec[:5]).shape == (2, 5, 12, 16)


class Quadratic(nn.Module):
    """E(x, y) = 0.5 ||y - x||^2 on the concatenation [x, y]."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, y = z.chunk(2, -1)
        return 0.5 * (y - x).pow(2).sum(-1, keepdim=True)


def test_energy_prediction_is_gradient_descent_on_the_energy():
    model = selfsup.EnergyNet(3, 3, 8)
    model.net = Quadratic()
    model.log_step.data.fill_(math.log(0.5))  # y <- y - 0.5 (y - x): the error halves every step
    x, y0 = torch.randn(4, 3), torch.zeros(4, 3)
    ys = model.predict(x, y0, 5)
    assert len(ys) == 6
    for k, y in enumerate(ys):
        assert torch.allclose(y - x, (y0 - x) * 0.5**k, atol=1e-6)
    ys = model.predict(x, y0, 3, create_graph=True)  # training backpropagates into the step size
    (ys[-1] - x).pow(2).sum().backward()
    assert model.log_step.grad is not None and model.log_step.grad.abs() > 0


def test_energy_and_feedforward_models_have_the_same_size():
    e, f = selfsup.EnergyNet(32, 32, 64), selfsup.FeedForwardNet(32, 32, 64)
    assert abs(count_params(e) - count_params(f)) / count_params(f) < 0.01
    assert f(torch.randn(5, 32)).shape == (5, 32)
    assert e.energy(torch.randn(5, 32), torch.randn(5, 32)).shape == (5,)
