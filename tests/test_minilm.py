"""The packaged MiniLM: checksum enforced, embeddings equal sentence-transformers' own."""
import shutil

import pytest
import torch

import ptmlib as ptm

from ptmlib import minilm


def test_checksum_passes_and_a_changed_file_fails(tmp_path):
    assert minilm.verify() == minilm.model_dir()
    copy = tmp_path / "model"
    copy.mkdir()
    shutil.copy(minilm.model_dir() / "model.safetensors", copy / "model.safetensors")
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(10_000_000)
        byte = f.read(1)
        f.seek(10_000_000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ValueError, match="SHA-256"):
        minilm.verify(copy)


def test_embeddings_match_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    texts = ["Return the number of items in a container.", "The length of a list.",
             "Open a network socket and listen for connections.", "x"]
    ours = minilm.embed(texts)
    ref = torch.from_numpy(SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(texts, normalize_embeddings=True))
    assert ours.shape == (4, 384)
    assert torch.allclose(ours, ref, atol=1e-5)
    sim = ours @ ours.T
    assert sim[0, 1] > sim[0, 2] + 0.1  # paraphrases are closer than unrelated sentences


def test_mean_pool_ignores_padding():
    h = torch.randn(2, 5, 3)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = ptm.models.mean_pool(h, m)
    assert torch.allclose(pooled[0], h[0, :3].mean(0)) and torch.allclose(pooled[1], h[1].mean(0))


def test_embed_with_another_model_uses_it():
    import copy

    from ptmlib import minilm as ml

    model, _ = ml.model_and_tokenizer()
    other = copy.deepcopy(model)
    texts = ["Return the sum of two numbers.", "Open a file for reading."]
    assert torch.allclose(ml.embed(texts, model=other), ml.embed(texts), atol=1e-6)
    with torch.no_grad():
        other.embeddings.word_embeddings.weight.mul_(0.5)
    assert not torch.allclose(ml.embed(texts, model=other), ml.embed(texts), atol=1e-3)


def test_last_ffn_on_cached_inputs_reproduces_the_embedding_and_can_be_adapted():
    import torch.nn.functional as F

    from ptmlib.peft import adapters

    texts = ["Return the sum of two numbers.", "Open a file for reading and return its lines.", "x"]
    inner, attn, mask = minilm.last_ffn_inputs(texts, max_length=16)
    assert inner.shape == (3, 16, 1536) and attn.shape == (3, 16, 384) and mask.shape == (3, 16)
    tail = minilm.LastFFN()
    got = F.normalize(tail(inner, attn, mask), dim=-1)
    assert torch.allclose(got, minilm.embed(texts, max_length=16), atol=1e-5)
    assert not any(p.requires_grad for p in tail.parameters())
    adapters.inject(tail, ["dense"], lambda n, lin: adapters.LoRALinear(lin, r=4))
    assert torch.allclose(F.normalize(tail(inner, attn, mask), dim=-1), got, atol=1e-6)  # LoRA starts at zero
    assert sum(p.numel() for p in tail.parameters() if p.requires_grad) == 4 * (1536 + 384)


def test_random_init_is_minilm_untrained_and_seeded():
    packaged, _ = minilm.model_and_tokenizer()
    state = torch.get_rng_state()
    a, b, c = minilm.random_init(0), minilm.random_init(0), minilm.random_init(1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert type(a) is type(packaged) and not a.training
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings", "hidden_act", "layer_norm_eps")
    assert {k: getattr(a.config, k) for k in keys} == {k: getattr(packaged.config, k) for k in keys}
    assert (a.config.hidden_size, a.config.num_hidden_layers) == (384, 6)
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}
    ours, theirs = shapes(a), shapes(packaged)
    assert {n: s for n, s in ours.items() if n in theirs} == theirs  # every pretrained weight, same shape
    weight = "encoder.layer.0.attention.self.query.weight"
    wa, wb, wc, wp = (dict(m.named_parameters())[weight] for m in (a, b, c, packaged))
    assert torch.equal(wa, wb)  # same seed, same weights
    assert not torch.allclose(wa, wc)  # another seed, other weights
    assert not torch.allclose(wa, wp, atol=1e-2)  # not the pretrained weights
    assert abs(float(wa.std()) - a.config.initializer_range) < 0.1 * a.config.initializer_range  # the config's init
    texts = ["Return the sum of two numbers.", "Open a file for reading."]
    assert not torch.allclose(minilm.embed(texts, model=a), minilm.embed(texts), atol=1e-2)
