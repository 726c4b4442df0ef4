"""Spectral and sparse wrappers, grafting and calibration: exact identities and known answers."""
import pytest
import torch

import ptmlib as ptm
from torch import nn

from ptmlib.peft import adapters, kind, spectral


def linear(d_in=6, d_out=5, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


def test_svfit_reproduces_the_layer_and_trains_only_singular_values():
    lin = linear()
    x = torch.randn(3, 6)
    for rank in (None, 2):
        wrapped = spectral.SVFitLinear(lin, rank)
        assert torch.allclose(wrapped(x), lin(x), atol=1e-5)
        assert [n for n, p in wrapped.named_parameters()] == ["s"]
    wrapped = spectral.SVFitLinear(lin, 2)
    with torch.no_grad():
        wrapped.s.mul_(2.0)  # doubling the top-2 singular values adds exactly U_2 S_2 V_2^T
    U, sig, Vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
    assert torch.allclose(wrapped.weight(), lin.weight + U[:, :2] @ torch.diag(sig[:2]) @ Vh[:2], atol=1e-5)


def test_low_rank_is_the_eckart_young_approximation_with_the_right_size():
    lin = linear(8, 7)
    approx = spectral.low_rank(lin, 3)
    W = (approx[1].weight @ approx[0].weight).detach()
    sig = torch.linalg.svdvals(lin.weight.detach())
    assert float(torch.linalg.matrix_norm(W - lin.weight.detach())) == pytest.approx(float(sig[3:].norm()), rel=1e-4)
    assert sum(p.numel() for p in approx.parameters()) == 3 * (8 + 7) + 7
    assert spectral.rank_for_fraction(384, 384, 1 / 3) == 64


def test_low_rank_layers_live_where_the_original_does():
    # the full profile compresses MiniLM on the GPU: the thin layers must follow the original's device and dtype
    lin = linear(8, 7).double()
    approx = spectral.low_rank(lin, 3)
    assert all(p.dtype == torch.float64 and p.device == lin.weight.device for p in approx.parameters())
    x = torch.randn(2, 8, dtype=torch.float64)
    assert approx(x).shape == (2, 7)


def test_smallest_mask_and_sara_update_live_on_the_smallest_weights():
    lin = linear(10, 10)
    mask = spectral.smallest_mask(lin.weight, 0.2)
    w = lin.weight.detach().abs()
    assert int(mask.sum()) == 20 and w[mask].max() <= w[~mask].min()
    sara = spectral.SaRALinear(lin, 0.2)
    x = torch.randn(4, 10)
    assert torch.allclose(sara(x), lin(x)) and sara.values.numel() == 20
    with torch.no_grad():
        sara.values.fill_(1.0)
    assert torch.equal(sara.update() != 0, mask)
    assert float(sara.nuclear().detach()) == pytest.approx(float(torch.linalg.svdvals(mask.float()).sum()), rel=1e-5)


def test_replace_linears_swaps_the_layers_that_pass_the_test():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    names = adapters.replace_linears(model, lambda n, lin: spectral.SVFitLinear(lin), lambda n: not n.startswith("2"))
    assert names == ["0"] and isinstance(model[0], spectral.SVFitLinear) and isinstance(model[2], nn.Linear)
    assert adapters.replace_linears(model, lambda n, lin: spectral.SVFitLinear(lin)) == ["2"]  # the rest: all Linear


def test_graft_copies_the_top_movers_and_random_control_the_same_number():
    pre = {"a": torch.zeros(4), "b": torch.zeros(2), "head": torch.zeros(1)}
    ft = {"a": torch.tensor([1.0, 5.0, 0.1, 0.2]), "b": torch.tensor([3.0, 0.0]), "head": torch.ones(1)}
    out, k = spectral.graft(pre, ft, fraction=2 / 6, always=("head",))
    assert k == 2 and out["a"].tolist() == [0, 5.0, 0, 0] and out["b"].tolist() == [3.0, 0] and out["head"].item() == 1
    rand, k = spectral.graft(pre, ft, fraction=0.5, always=("head",), gen=torch.Generator().manual_seed(0))
    changed = sum(int((rand[n] != pre[n]).sum()) for n in ("a", "b"))
    assert k == 3 and changed <= 3


def test_ece_is_zero_when_confidence_equals_accuracy_and_known_otherwise():
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert ptm.metrics.ece(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0)  # 75% right at confidence 0.75
    assert ptm.metrics.ece(probs, torch.tensor([1, 1, 1, 1])) == pytest.approx(0.75)  # never right


def test_kind_gate_and_transfer_of_common_components():
    torch.manual_seed(0)
    layer = kind.KINDLinear(4, 3, n_common=2, n_tailor=1, n_classes=3)
    assert layer.gate.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 0, 1]]
    x = torch.randn(2, 4)
    classes = torch.tensor([0, 2])
    manual = torch.stack([(layer.U * (layer.s * layer.gate[c])) @ layer.V @ x[i] + layer.b for i, c in enumerate(classes)])
    assert torch.allclose(layer(x, classes), manual, atol=1e-6)
    other = kind.KINDLinear(4, 3, 2, 1, 3)
    other.load_common(layer)
    assert torch.equal(other.U[:, :2], layer.U[:, :2]) and not torch.equal(other.U[:, 2:], layer.U[:, 2:])
    model = kind.KINDDenoiser(2, 1, 3, width=8)
    common_only = model(torch.randn(2, 64), classes, part="common")
    assert common_only.shape == (2, 64)
    with torch.no_grad():  # with the tailors' singular values zeroed, "all" equals "common"
        for lay in (model.l1, model.l2):
            lay.s[2:] = 0
    z = torch.randn(2, 64)
    assert torch.allclose(model(z, classes), model(z, classes, part="common"))


def test_fit_denoiser_learns_and_denoising_error_is_fixed_by_its_seed():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 64, generator=g)
    classes = torch.randint(0, 2, (64,), generator=g)
    model = kind.ConditionalDenoiser(2, width=32)
    P = ptm.resolve_profile("smoke", seed=0, cuda_available=False)
    before = kind.denoising_error(model, x, classes)
    assert before == kind.denoising_error(model, x, classes)  # same noise draw every call
    kind.fit_denoiser(model, x, classes, ptm.TrainConfig(num_steps=200, lr=3e-3, log_every=200), P)
    assert kind.denoising_error(model, x, classes) < min(before, 0.25)  # beats returning the noisy input
