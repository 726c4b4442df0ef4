import torch

from ptmlib.metrics import count_params
from ptmlib.models import tiny_bert, tiny_gpt2, tiny_gpt2_backbone, tiny_t5


def test_gpt2_parameter_count_matches_the_closed_form():
    V, T, C, L = 50, 16, 32, 3
    model = tiny_gpt2(vocab_size=V, n_positions=T, n_embd=C, n_layer=L, n_head=4)
    per_block = 12 * C * C + 13 * C  # attention 4C^2 + 4C, MLP 8C^2 + 5C, two LayerNorms 4C
    assert count_params(model) == V * C + T * C + L * per_block + 2 * C  # lm_head tied to wte


def test_gpt2_uses_small_vocab_special_tokens_and_sdpa():
    model = tiny_gpt2(vocab_size=20, n_positions=8)
    assert model.config.bos_token_id == 0 and model.config.eos_token_id == 0
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 20, (2, 8))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 8, 20)
    assert abs(out.loss.item() - torch.log(torch.tensor(20.0)).item()) < 0.5  # near uniform at init


def test_gpt2_backbone_is_causal():
    model = tiny_gpt2_backbone(n_positions=6, n_embd=16, n_layer=2, n_head=2).eval()
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] += torch.randn(1, 2, 16)  # not a constant shift: LayerNorm would cancel that
    with torch.no_grad():
        a, b = model(inputs_embeds=x).last_hidden_state, model(inputs_embeds=y).last_hidden_state
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and not torch.allclose(a[:, 4:], b[:, 4:])


def test_bert_masked_lm_and_t5_seq2seq_run():
    bert = tiny_bert(vocab_size=30, max_len=12).eval()
    ids = torch.randint(1, 30, (2, 12))
    assert bert(input_ids=ids).logits.shape == (2, 12, 30)
    t5 = tiny_t5(vocab_size=30).eval()
    labels = torch.randint(2, 30, (2, 5))
    out = t5(input_ids=ids, labels=labels)
    assert out.logits.shape == (2, 5, 30) and torch.isfinite(out.loss)
    assert t5.config.decoder_start_token_id == 0


def test_count_params_trainable_only():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert count_params(model) == 16 + 10 and count_params(model, trainable_only=True) == 10
