"""LoRA and IA3 written in ptmlib agree with the peft library; adapters start as the identity."""
import copy

import pytest
import torch

import ptmlib as ptm
import torch.nn.functional as F
from peft import IA3Config, LoraConfig, get_peft_model

from ptmlib.peft import adapters
from ptmlib.models import tiny_bert

V, T = 50, 12


def model():
    torch.manual_seed(0)
    return tiny_bert(V, T, hidden=32, n_layer=2, n_head=2).eval()


def batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(5, V, (8, T), generator=g) for _ in range(n)]


def train_same(ours, theirs, steps):
    """The same AdamW updates on the same batches (loss: mean logit of token 7, a simple target)."""
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (ours, theirs)]
    for x in batches(steps):
        for m, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            m(input_ids=x).logits[..., 7].mean().backward()
            opt.step()


def test_lora_matches_peft_at_init_after_training_and_merged():
    base = model()
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                            lora_dropout=0.0))
    ours = copy.deepcopy(base)
    names = adapters.inject(ours, ["query", "value"], lambda n, lin: adapters.LoRALinear(lin, r=4, alpha=8))
    assert len(names) == 4
    for name in names:  # start from peft's random A (B is zero in both)
        layer = theirs.base_model.model.get_submodule(name)
        ours.get_submodule(name).A.data.copy_(layer.lora_A["default"].weight)
    x = batches(1)[0]
    assert torch.allclose(ours(input_ids=x).logits, base(input_ids=x).logits)  # identity at init
    assert ptm.metrics.count_params(ours, trainable_only=True) == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    train_same(ours, theirs, 5)
    with torch.no_grad():
        out_ours, out_theirs = ours(input_ids=x).logits, theirs(input_ids=x).logits
    assert not torch.allclose(out_ours, base(input_ids=x).logits, atol=1e-3)  # training moved it
    assert torch.allclose(out_ours, out_theirs, atol=1e-5)
    merged_theirs = theirs.merge_and_unload()
    adapters.merge(ours)
    assert not any(isinstance(m, adapters.LoRALinear) for m in ours.modules())
    assert torch.allclose(ours(input_ids=x).logits, out_ours, atol=1e-5)
    assert torch.allclose(ours(input_ids=x).logits, merged_theirs(input_ids=x).logits, atol=1e-5)


def test_ia3_matches_peft_after_training_and_merged():
    base = model()
    cfg = IA3Config(target_modules=["key", "value", "intermediate.dense"], feedforward_modules=["intermediate.dense"])
    theirs = get_peft_model(copy.deepcopy(base), cfg)
    ours = copy.deepcopy(base)
    adapters.inject(ours, ["key", "value", "intermediate.dense"],
                    lambda n, lin: adapters.IA3Linear(lin, feedforward=n.endswith("intermediate.dense")))
    assert ptm.metrics.count_params(ours, trainable_only=True) == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    x = batches(1)[0]
    assert torch.allclose(ours(input_ids=x).logits, base(input_ids=x).logits)
    train_same(ours, theirs, 5)
    with torch.no_grad():
        out_ours = ours(input_ids=x).logits
        assert torch.allclose(out_ours, theirs(input_ids=x).logits, atol=1e-5)
    adapters.merge(ours)
    assert torch.allclose(ours(input_ids=x).logits, out_ours, atol=1e-5)
    assert torch.allclose(ours(input_ids=x).logits, theirs.merge_and_unload()(input_ids=x).logits, atol=1e-5)


def test_adapter_starts_as_identity_and_trains_only_itself():
    base = model()
    ours = copy.deepcopy(base)
    adapters.inject(ours, ["attention.output.dense"], lambda n, lin: adapters.Adapter(lin, bottleneck=4))
    x = batches(1)[0]
    assert torch.allclose(ours(input_ids=x).logits, base(input_ids=x).logits)
    assert ptm.metrics.count_params(ours, trainable_only=True) == 2 * (32 * 4 + 4 + 4 * 32 + 32)
    ours(input_ids=x).logits.sum().backward()
    assert all(p.grad is None for n, p in ours.named_parameters() if "down" not in n and "up" not in n)


def test_inject_rejects_unknown_targets():
    with pytest.raises(ValueError, match="no nn.Linear"):
        adapters.inject(model(), ["nonexistent"], lambda n, lin: lin)


def test_prompt_tuning_matches_peft_and_trains_only_the_prompt():
    from peft import PromptTuningConfig, TaskType

    from ptmlib.models import tiny_gpt2

    torch.manual_seed(0)
    base = tiny_gpt2(V, 32, n_embd=32, n_layer=2, n_head=2)
    theirs = get_peft_model(copy.deepcopy(base), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4))
    ours = adapters.PromptTuning(copy.deepcopy(base), 4, init=theirs.prompt_encoder["default"].embedding.weight)
    assert ptm.metrics.count_params(ours, trainable_only=True) == 4 * 32
    x = batches(1)[0]
    assert torch.allclose(ours(x).logits, theirs(input_ids=x).logits, atol=1e-6)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (ours, theirs)]
    for xb in batches(3):
        for m, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            (m(xb) if m is ours else m(input_ids=xb)).logits[..., 7].mean().backward()
            opt.step()
    assert torch.allclose(ours(x).logits, theirs(input_ids=x).logits, atol=1e-5)
    assert torch.equal(ours.model.transformer.wte.weight, base.transformer.wte.weight)  # the model stayed frozen


def test_lora_vs_peft_reports_agreement_and_catches_a_wrong_scaling(monkeypatch):
    loss = lambda m, ids: m(input_ids=ids).logits[..., 7].mean()
    gaps = adapters.lora_vs_peft(model(), ["query", "value"], r=4, alpha=8, batches=batches(3), loss=loss)
    assert set(gaps) == {"init", "trained", "merged"} and max(gaps.values()) <= 1e-5
    original = adapters.LoRALinear.forward
    monkeypatch.setattr(adapters.LoRALinear, "forward",
                        lambda self, x: original(self, x) + 0.01 * self.scaling * F.linear(F.linear(x, self.A), self.B))
    wrong = adapters.lora_vs_peft(model(), ["query", "value"], r=4, alpha=8, batches=batches(3), loss=loss)
    assert wrong["init"] == 0.0 and wrong["trained"] > 1e-4  # B = 0 hides it at init, not after training


def test_gated_lora_equals_lora_at_unit_gates_and_bake_keeps_the_function():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    plain, gated = adapters.LoRALinear(copy.deepcopy(base), r=3, alpha=6), adapters.GatedLoRALinear(copy.deepcopy(base), r=3, alpha=6)
    with torch.no_grad():
        for m in (plain, gated):
            m.A.copy_(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)))
            m.B.copy_(torch.randn(5, 3, generator=torch.Generator().manual_seed(2)))
    x = torch.randn(4, 6)
    assert torch.allclose(gated(x), plain(x), atol=1e-6)
    with torch.no_grad():
        gated.g.copy_(torch.tensor([0.5, 0.0, -2.0]))
    expect = base(x) + 2.0 * x @ gated.A.T @ torch.diag(gated.g) @ gated.B.T  # closed form, scaling alpha / r = 2
    assert torch.allclose(gated(x), expect, atol=1e-5)
    assert gated.active_rank() == 2
    before = gated(x).detach()
    gated.bake()
    assert torch.allclose(gated(x), before, atol=1e-5)  # the update now lives in the frozen weight
    assert bool((gated.B == 0).all()) and bool((gated.g == 1).all()) and gated.active_rank() == 3
    assert not gated.base.weight.requires_grad


def test_soft_threshold_is_the_l1_proximal_step():
    p = torch.tensor([1.0, -0.3, 0.05, -2.0])
    adapters.soft_threshold_([p], 0.1)
    assert torch.allclose(p, torch.tensor([0.9, -0.2, 0.0, -1.9]))
    # the proximal step minimises 0.5 (q - p0)^2 + a |q| coordinate-wise: check against a dense grid
    p0, a = torch.tensor([0.7]), 0.25
    q = p0.clone()
    adapters.soft_threshold_([q], a)
    grid = torch.linspace(-2, 2, 40001)
    best = grid[(0.5 * (grid - p0) ** 2 + a * grid.abs()).argmin()]
    assert abs(float(q) - float(best)) < 1e-3
