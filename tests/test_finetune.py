"""Fine-tuning methods: the right parameters train, memory is counted exactly, the side network
never backpropagates into the encoder."""
import copy

import pytest
import torch
import torch.nn.functional as F

import ptmlib as ptm
from ptmlib.peft import adapters
from ptmlib.peft import finetune
from ptmlib.peft import levi, spectral
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
    model = finetune.prepare(copy.deepcopy(enc), method, C, n_prompt=4)
    assert ptm.metrics.count_params(model, trainable_only=True) == expected(enc)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        finetune.prepare(encoder(), "bitfit", C)


def test_adapters_lora_ia3_start_as_the_frozen_encoder():
    ids, _ = data()
    ref = finetune.Classifier(encoder(), C)
    for method in ("lora", "adapter", "ia3"):
        torch.manual_seed(0)
        other = finetune.prepare(encoder(), method, C)
        other.head.load_state_dict(ref.head.state_dict())
        assert torch.allclose(other(ids, finetune.pad_mask(ids)), ref(ids, finetune.pad_mask(ids)), atol=1e-6)


def test_training_memory_counts_a_linear_model_exactly():
    """For the loss sum((W x)^2) with W trainable (d_out x d_in) and a batch x (B x d_in):
    params = grads = 4 * numel(W) bytes, AdamW moments = 2 * that, and autograd keeps exactly x (for
    dW = g x^T) and W x (for the square's derivative) - the weight itself is not counted again."""
    lin = torch.nn.Linear(6, 3, bias=False)
    x = torch.randn(5, 6)
    loss = lambda m: m(x).pow(2).sum()
    mem = finetune.training_memory(lin, loss)
    assert mem.params == mem.grads == 4 * 18
    assert mem.optimizer == 2 * 4 * 18
    assert mem.activations == 4 * 5 * 6 + 4 * 5 * 3
    assert mem.total == 4 * 18 * 4 + 4 * 5 * 9
    lin.requires_grad_(False)
    assert finetune.training_memory(lin, loss).activations == 0  # nothing needs a gradient: nothing saved


def test_side_network_saves_no_encoder_activations_and_leaves_it_untouched():
    ids, y = data()
    enc = encoder()
    side = finetune.prepare(copy.deepcopy(enc), "unipt", C, side=8)
    lora = finetune.prepare(copy.deepcopy(enc), "lora", C)
    loss = lambda m: F.cross_entropy(m(ids, finetune.pad_mask(ids)), y)
    assert finetune.training_memory(side, loss).activations < finetune.training_memory(lora, loss).activations / 2
    loss(side).backward()
    assert all(p.grad is None for p in side.encoder.parameters())
    assert side.side.down[0].weight.grad is not None


def test_cached_states_give_the_same_predictions_and_fit_learns():
    ids, y = data(32)
    torch.manual_seed(0)
    model = finetune.prepare(encoder(), "unipt", C, side=8)
    states = finetune.cached_states(model, ids, batch=5)
    assert states.shape == (3, 32, T, 16)
    with torch.no_grad():
        assert torch.allclose(model(ids, finetune.pad_mask(ids)), model(ids, finetune.pad_mask(ids), tuple(states)), atol=1e-6)
    P = ptm.resolve_profile("smoke", seed=0, cuda_available=False)
    cfg = ptm.TrainConfig(num_steps=150, lr=1e-2, log_every=150)
    before = finetune.classifier_accuracy(model, ids, y, states)
    finetune.fit_classifier(model, ids, y, cfg, P, batch=8, states=states)
    assert finetune.classifier_accuracy(model, ids, y, states) >= 0.9 > before  # memorises 32 random labels


def test_prompt_classifier_uses_prompt_tuning_and_pools_only_the_real_tokens():
    ids, _ = data()
    torch.manual_seed(0)
    model = finetune.prepare(encoder(), "prompt", C, n_prompt=4)
    assert isinstance(model.prompted, adapters.PromptTuning) and model.prompted.model is model.encoder
    mask = finetune.pad_mask(ids)
    embeds = model.encoder.get_input_embeddings()(ids)
    full = torch.cat([model.prompted.prompt[None].expand(len(ids), -1, -1), embeds], 1)
    ones = torch.ones(len(ids), 4, dtype=mask.dtype)
    hidden = model.encoder(inputs_embeds=full, attention_mask=torch.cat([ones, mask], 1)).last_hidden_state[:, 4:]
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.allclose(model.features(ids, mask), expected, atol=1e-6)


def test_layerwise_ensemble_weights_views_and_freezes_the_body():
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.GELU(), torch.nn.Linear(5, 5), torch.nn.GELU())
    small = torch.nn.Linear(4, 2)
    model = levi.LayerwiseEnsemble(body, small, 5, 2)
    x = torch.randn(3, 4)
    views = model.views(x)
    assert views.shape == (3, 3, 2)
    assert torch.allclose(model(x), views.mean(0), atol=1e-6)  # zero weights: a plain average
    assert torch.allclose(views[-1], small(x))
    assert not any(p.requires_grad for p in body.parameters())


def test_distil_hidden_states_pulls_a_student_towards_its_teacher():
    teacher = encoder()
    torch.manual_seed(5)
    student = encoder()
    for p in student.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    ids, _ = data(16)
    batch = {"input_ids": ids, "attention_mask": finetune.pad_mask(ids)}

    def gap():
        with torch.no_grad():
            a = student(**batch, output_hidden_states=True).hidden_states
            b = teacher(**batch, output_hidden_states=True).hidden_states
        return sum(float(F.mse_loss(u, v)) for u, v in zip(a[1:], b[1:]))

    before = gap()
    P = ptm.resolve_profile("smoke", seed=0, cuda_available=False)
    spectral.distil_hidden_states(student, teacher, lambda g: batch, ptm.TrainConfig(num_steps=50, lr=1e-2, log_every=50), P)
    assert gap() < 0.5 * before
