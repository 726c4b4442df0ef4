"""The standard-library corpus and its BPE tokenizer: deterministic, split cleanly, lossless."""
from collections import Counter

import pytest
import torch

from ptmlib import text


def test_split_is_a_stable_hash_with_the_stated_proportions():
    ids = [f"doc{i}" for i in range(20000)]
    splits = Counter(text.split_of(i) for i in ids)
    assert abs(splits["train"] / 20000 - 0.90) < 0.01
    assert abs(splits["val"] / 20000 - 0.05) < 0.006
    # a hash of the id, not of the process: a fresh interpreter (another PYTHONHASHSEED) agrees
    import subprocess
    import sys
    code = "from ptmlib import text; print(''.join(text.split_of(f'doc{i}')[0] for i in range(50)))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert other == "".join(text.split_of(i)[0] for i in ids[:50])


def test_corpus_splits_are_disjoint_and_deterministic():
    c = text.corpus()
    ids = {k: [d.id for d in v] for k, v in c.items()}
    assert len(ids["train"]) > 4000 and len(ids["val"]) > 100 and len(ids["test"]) > 100
    assert not set(ids["train"]) & set(ids["val"]) and not set(ids["train"]) & set(ids["test"])
    assert all(text.split_of(i) == k for k, v in ids.items() for i in v)
    assert [d.id for d in text.corpus()["val"]] == ids["val"]
    assert any(d.module == "reference" for d in c["train"])  # the language reference is in
    assert all(len(d.text) >= text.MIN_CHARS for v in c.values() for d in v)


def test_tokenizer_round_trips_and_fixes_the_special_ids():
    tok = text.tokenizer(1024)
    assert tok.get_vocab_size() == 1024
    for i, name in enumerate(text.SPECIALS):
        assert tok.token_to_id(name) == i
    for d in text.corpus()["test"][:50]:
        assert tok.decode(tok.encode(d.text).ids) == d.text
    assert tok.decode(tok.encode("naïve café → λ").ids) == "naïve café → λ"  # bytes, not characters


def test_training_the_tokenizer_is_deterministic():
    texts = [d.text for d in text.corpus()["val"]]
    a, b = text.train_tokenizer(texts, 400), text.train_tokenizer(texts, 400)
    assert a.get_vocab() == b.get_vocab()


def test_stream_has_one_eos_per_document_and_chunks_are_windows():
    stream = text.token_stream("val")
    assert int((stream == text.EOS).sum()) == len(text.corpus()["val"])
    g = torch.Generator().manual_seed(0)
    chunks = text.random_chunks(stream, 8, 32, g)
    for row in chunks:
        hits = [s for s in range(len(stream) - 31) if torch.equal(stream[s:s + 32], row)]
        assert hits


def test_labelled_docs_are_balanced_when_capped():
    ids, y, names = text.labelled_docs("train", 8, 48, per_class=15)
    assert len(names) == 8 and "reference" not in names
    assert torch.equal(torch.bincount(y, minlength=8), torch.full((8,), 15))
    assert ids.shape == (120, 48) and (ids[:, 0] != text.PAD).all()


def test_labelled_texts_agree_with_the_tokenised_task():
    texts, y, names = text.labelled_texts("val", 8, per_class=5)
    ids, y2, names2 = text.labelled_docs("val", 8, 32, per_class=5)
    assert names == names2 and torch.equal(y, y2) and len(texts) == len(ids)
    tok = text.tokenizer(1024)
    assert tok.encode(texts[0]).ids[:32] == [i for i in ids[0].tolist() if i != text.PAD]


def test_module_stream_holds_exactly_that_modules_documents():
    from ptmlib import text as tx

    docs = [d for d in tx.corpus()["val"] if d.module == "asyncio"]
    stream = tx.module_stream("asyncio", "val")
    assert int((stream == tx.EOS).sum()) == len(docs)
    assert tx.tokenizer().decode(stream[: int((stream == tx.EOS).nonzero()[0])].tolist()) == docs[0].text
    with pytest.raises(ValueError, match="no documents"):
        tx.module_stream("no_such_module", "train")


def test_encode_padded_truncates_and_pads():
    from ptmlib import text as tx

    ids = tx.encode_padded(["def f(): pass", ""], 5)
    assert ids.shape == (2, 5) and (ids[1] == tx.PAD).all()
    assert ids[0].tolist() == tx.tokenizer().encode("def f(): pass").ids[:5] + [tx.PAD] * max(0, 5 - len(tx.tokenizer().encode("def f(): pass").ids))


def test_random_chunks_start_where_the_generator_says_and_live_on_its_device():
    stream = torch.arange(1000)
    chunks = text.random_chunks(stream, 5, 7, torch.Generator().manual_seed(3))
    starts = torch.randint(0, 1000 - 7 + 1, (5,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(chunks, starts[:, None] + torch.arange(7))  # stream[i] = i: each row is its window
    if torch.cuda.is_available():  # a CUDA generator (the full profile's) with the stream left on the CPU
        gpu = text.random_chunks(stream, 5, 7, torch.Generator("cuda").manual_seed(3))
        assert gpu.device.type == "cuda" and torch.equal(gpu.cpu() - gpu.cpu()[:, :1], torch.arange(7).expand(5, 7))
