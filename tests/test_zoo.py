"""The model zoo: deterministic training, cache hits, keys that follow the spec, models that learned."""
import pytest
import torch

import ptmlib as ptm

from ptmlib import text, zoo


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PTM_CACHE", str(tmp_path))
    return tmp_path


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_clean_cache_gives_the_same_weights_and_a_hit_does_not_retrain(cache):
    spec = zoo.variant("stdlib-gpt", name="tiny-gpt", width=16, steps=8)
    first = zoo.load(spec)
    file = zoo.path(spec)
    stamp = file.stat().st_mtime_ns
    again = zoo.load(spec)
    assert file.stat().st_mtime_ns == stamp and same(first, again)
    file.unlink()
    retrained = zoo.load(spec)
    assert same(first, retrained) and not same(first, zoo.build(spec))


def test_key_follows_the_spec():
    a = zoo.variant("digits-mlp", steps=10)
    assert zoo.key(a) == zoo.key(zoo.variant("digits-mlp", steps=10))
    assert zoo.key(a) != zoo.key(zoo.variant("digits-mlp", steps=11))
    with pytest.raises(ValueError, match="unknown zoo kind"):
        zoo.build(zoo.variant("digits-mlp", kind="cnn"))


def test_pretrained_models_learned_their_source_task(cache):
    spec = zoo.variant("digits-mlp", steps=150)
    model = zoo.load(spec)
    x, y = ptm.data.digits(spec.classes, "test")
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean()
    assert acc > 0.9 and set(y.tolist()) == set(spec.classes)
    gpt_spec = zoo.variant("stdlib-gpt", name="tiny-gpt", width=32, steps=60)
    ids = text.random_chunks(text.token_stream("val"), 16, 64, torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = zoo.load(gpt_spec)(input_ids=ids, labels=ids).loss
        untrained = zoo.build(gpt_spec)(input_ids=ids, labels=ids).loss
    assert trained < untrained - 0.5


def test_digits_split_is_disjoint_and_complete():
    xtr, ytr = ptm.data.digits(None, "train")
    xte, yte = ptm.data.digits(None, "test")
    assert len(xtr) + len(xte) == 1797 and xtr.max() <= 1.0
    rows = {tuple(r.tolist()) for r in xtr}
    assert sum(tuple(r.tolist()) in rows for r in xte) < 20  # the digits set has a few exact duplicates


def test_shift_digits_moves_every_image_one_pixel_right_before_noise():
    x, _ = ptm.data.digits((3,), "test")
    clean = ptm.data.shift_digits(x, pixels=1, noise=0.0)
    img, out = x.reshape(-1, 8, 8), clean.reshape(-1, 8, 8)
    assert torch.equal(out[:, :, 1:], img[:, :, :-1]) and torch.equal(out[:, :, 0], img[:, :, -1])
    noisy = ptm.data.shift_digits(x)
    assert torch.equal(noisy, ptm.data.shift_digits(x)) and 0.1 < float((noisy - clean).std()) < 0.2


def test_digits_mlp_depths_count_linear_layers_from_the_input():
    from ptmlib.zoo import DigitsMLP

    depths = DigitsMLP(width=8, n_layer=3).depths()
    assert depths == {"body.0.weight": 0, "body.0.bias": 0, "body.2.weight": 1, "body.2.bias": 1,
                      "body.4.weight": 2, "body.4.bias": 2, "head.weight": 3, "head.bias": 3}
