"""Fine-tuning methods: the right parameters train, memory is counted exactly, the side network
never backpropagates into the encoder."""
import copy

import pytest
import torch
import torch.nn.functional as F

import ptmlib as ptm
from ptmlib.peft import adapters
from ptmlib.peft import finetune as ft
from ptmlib.models import tiny_bert

V, T, C = 40, 10, 3


def encoder():
    torch.manual_seed(0)
    return tiny_bert(V, T + 4, hidden=16, n_layer=2, n_head=2).bert.eval()


def data(n=8):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, V, (n, T), generator=g)
    ids[:, -2:] = 0  # padding
    return ids, torch.randint(0, C, (n,), generator=g)


@pytest.mark.parametrize("method,expected", [
    ("probe", lambda e: 2 * 16 + 16 * C + C),  # LayerNorm + head
    ("full", lambda e: sum(p.numel() for p in e.parameters()) + 2 * 16 + 16 * C + C),
    ("lora", lambda e: 2 * 2 * (8 * 16 + 16 * 8) + 2 * 16 + 16 * C + C),  # 2 layers x (query, value) x (A, B)
    ("ia3", lambda e: 2 * (16 + 16 + 64) + 2 * 16 + 16 * C + C),  # key, value outputs; FF output layer input
    ("prompt", lambda e: 4 * 16 + 2 * 16 + 16 * C + C),
])
def test_each_method_trains_exactly_its_parameters(method, expected):
    enc = encoder()
    model = ft.prepare(copy.deepcopy(enc), method, C, n_prompt=4)
    assert ptm.metrics.count_params(model, trainable_only=True) == expected(enc)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        ft.prepare(encoder(), "bitfit", C)


def test_adapters_lora_ia3_start_as_the_frozen_encoder():
    ids, _ = data()
    ref = ft.Classifier(encoder(), C)
    for method in ("lora", "adapter", "ia3"):
        torch.manual_seed(0)
        other = ft.prepare(encoder(), method, C)
        other.head.load_state_dict(ref.head.state_dict())
        assert torch.allclose(other(ids, ft.pad_mask(ids)), ref(ids, ft.pad_mask(ids)), atol=1e-6)


def test_training_memory_counts_a_linear_model_exactly():
    """For the loss sum((W x)^2) with W trainable (d_out x d_in) and a batch x (B x d_in):
    params = grads = 4 * numel(W) bytes, AdamW moments = 2 * that, and autograd keeps exactly x (for
    dW = g x^T) and W x (for the square's derivative) - the weight itself is not counted again."""
    lin = torch.nn.Linear(6, 3, bias=False)
    x = torch.randn(5, 6)
    loss = lambda m: m(x).pow(2).sum()
    mem = ft.training_memory(lin, loss)
    assert mem.params == mem.grads == 4 * 18
    assert mem.optimizer == 2 * 4 * 18
    assert mem.activations == 4 * 5 * 6 + 4 * 5 * 3
    assert mem.total == 4 * 18 * 4 + 4 * 5 * 9
    lin.requires_grad_(False)
    assert ft.training_memory(lin, loss).activations == 0  # nothing needs a gradient: nothing saved


def test_side_network_saves_no_encoder_activations_and_leaves_it_untouched():
    ids, y = data()
    enc = encoder()
    side = ft.prepare(copy.deepcopy(enc), "unipt", C, side=8)
    lora = ft.prepare(copy.deepcopy(enc), "lora", C)
    loss = lambda m: F.cross_entropy(m(ids, ft.pad_mask(ids)), y)
    assert ft.training_memory(side, loss).activations < ft.training_memory(lora, loss).activations / 2
    loss(side).backward()
    assert all(p.grad is None for p in side.encoder.parameters())
    assert side.side.down[0].weight.grad is not None


def test_cached_states_give_the_same_predictions_and_fit_learns():
    ids, y = data(32)
    torch.manual_seed(0)
    model = ft.prepare(encoder(), "unipt", C, side=8)
    states = ft.cached_states(model, ids, batch=5)
    assert states.shape == (3, 32, T, 16)
    with torch.no_grad():
        assert torch.allclose(model(ids, ft.pad_mask(ids)), model(ids, ft.pad_mask(ids), tuple(states)), atol=1e-6)
    P = ptm.resolve_profile("smoke", seed=0, cuda_available=False)
    cfg = ptm.TrainConfig(num_steps=150, lr=1e-2, log_every=150)
    before = ft.accuracy(model, ids, y, states)
    ft.fit(model, ids, y, cfg, P, batch=8, states=states)
    assert ft.accuracy(model, ids, y, states) >= 0.9 > before  # memorises 32 random labels


def test_layerwise_ensemble_weights_views_and_freezes_the_body():
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.GELU(), torch.nn.Linear(5, 5), torch.nn.GELU())
    small = torch.nn.Linear(4, 2)
    model = ft.LayerwiseEnsemble(body, small, 5, 2)
    x = torch.randn(3, 4)
    views = model.views(x)
    assert views.shape == (3, 3, 2)
    assert torch.allclose(model(x), views.mean(0), atol=1e-6)  # zero weights: a plain average
    assert torch.allclose(views[-1], small(x))
    assert not any(p.requires_grad for p in body.parameters())


def test_fit_arrays_learns_and_snapshots_the_trajectory():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(5, 2)
    P = ptm.resolve_profile("smoke", seed=0, cuda_available=False)
    snaps = ft.fit_arrays(model, x, y, ptm.TrainConfig(num_steps=60, lr=0.1, log_every=60), P,
                          batch=16, noise=0.1, snapshot_every=20)
    assert len(snaps) == 3 and torch.equal(snaps[-1]["weight"], model.weight)
    assert not torch.equal(snaps[0]["weight"], snaps[-1]["weight"])
    assert float((model(x).argmax(-1) == y).float().mean()) > 0.9


def test_fit_denoiser_learns_and_denoising_error_is_fixed_by_its_seed():
    from ptmlib.peft import spectral as S

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 64, generator=g)
    classes = torch.randint(0, 2, (64,), generator=g)
    model = S.ConditionalDenoiser(2, width=32)
    P = ptm.resolve_profile("smoke", seed=0, cuda_available=False)
    before = ft.denoising_error(model, x, classes)
    assert before == ft.denoising_error(model, x, classes)  # same noise draw every call
    ft.fit_denoiser(model, x, classes, ptm.TrainConfig(num_steps=200, lr=3e-3, log_every=200), P)
    assert ft.denoising_error(model, x, classes) < min(before, 0.25)  # beats returning the noisy input


def test_distil_hidden_states_pulls_a_student_towards_its_teacher():
    teacher = encoder()
    torch.manual_seed(5)
    student = encoder()
    for p in student.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    ids, _ = data(16)
    batch = {"input_ids": ids, "attention_mask": ft.pad_mask(ids)}

    def gap():
        with torch.no_grad():
            a = student(**batch, output_hidden_states=True).hidden_states
            b = teacher(**batch, output_hidden_states=True).hidden_states
        return sum(float(F.mse_loss(u, v)) for u, v in zip(a[1:], b[1:]))

    before = gap()
    P = ptm.resolve_profile("smoke", seed=0, cuda_available=False)
    ft.distil_hidden_states(student, teacher, lambda g: batch, ptm.TrainConfig(num_steps=50, lr=1e-2, log_every=50), P)
    assert gap() < 0.5 * before
