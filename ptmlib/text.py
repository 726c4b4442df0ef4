"""A real text corpus and a BPE tokenizer, built offline from the Python standard library.

Documents: every topic of the language reference (`pydoc_data.topics`) and every docstring of at
least `MIN_CHARS` characters in the installed standard library's sources (parsed with `ast`, never
imported), each labelled with the module it comes from. The split into train/validation/test is a
hash of the document's id, so it is deterministic and stable when documents are added.

The tokenizer is byte-level BPE trained with the `tokenizers` library on the training split. Its
first ids are fixed special tokens (`SPECIALS`): padding, end of document, [MASK], the UL2 mode
tokens and the sentinels of span corruption, so every objective in `ptmlib.objectives.denoising` can rely on
them. Corpus, tokenizer and token stream are cached in `cache_dir()/text`, keyed by the Python
version, the vocabulary size and this module's version.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ptmlib.checkpoint import atomic_write
from ptmlib.paths import cache_dir

VERSION = "1"  # bump when the corpus or tokenizer recipe changes: it invalidates every cache entry
MIN_CHARS = 40
SKIP = ("test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "tkinter", "__pycache__")
N_SENTINELS = 16
SPECIALS = ["<pad>", "<eos>", "<mask>", "[R]", "[S]", "[X]"] + [f"<s{i}>" for i in range(N_SENTINELS)]
PAD, EOS, MASK, MODE_R, MODE_S, MODE_X = range(6)
SENTINEL0 = 6  # ids SENTINEL0 .. SENTINEL0 + N_SENTINELS - 1


@dataclass(frozen=True)
class Doc:
    """One document: a stable id, its text, and its source module (the label of the probe task)."""

    id: str
    text: str
    module: str


def split_of(doc_id: str) -> str:
    """'train' (90%), 'val' (5%) or 'test' (5%), from a hash of the document id."""
    bucket = int(hashlib.md5(doc_id.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "test"


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return "\n".join(lines)


def _collect_docs() -> list[Doc]:
    import pydoc_data.topics

    docs = [Doc(f"topic:{k}", _clean(v), "reference") for k, v in sorted(pydoc_data.topics.topics.items())]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        module = rel.parts[0].removesuffix(".py")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text:
                    name = getattr(node, "name", "<module>")
                    docs.append(Doc(f"{rel}:{getattr(node, 'lineno', 0)}:{name}", _clean(text), module))
    return [d for d in docs if len(d.text) >= MIN_CHARS]


def _text_dir() -> Path:
    """`$PTM_TEXT_CACHE` if set (the tests share one per session), else `cache_dir()/text`."""
    env = os.environ.get("PTM_TEXT_CACHE")
    folder = Path(env) if env else cache_dir() / "text"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def corpus() -> dict[str, list[Doc]]:
    """The documents by split ('train', 'val', 'test'), in a fixed order; cached after the first call."""
    path = _text_dir() / f"corpus-py{sys.version_info.major}.{sys.version_info.minor}-v{VERSION}.json"
    if path.exists():
        rows = json.loads(path.read_text())
    else:
        rows = [[d.id, d.text, d.module] for d in _collect_docs()]
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(rows)))
    out: dict[str, list[Doc]] = {"train": [], "val": [], "test": []}
    for doc_id, text, module in rows:
        out[split_of(doc_id)].append(Doc(doc_id, text, module))
    return out


def corpus_digest(docs: list[Doc]) -> str:
    """A short digest of a list of documents (part of every cache key that depends on them)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.id.encode())
        h.update(d.text.encode())
    return h.hexdigest()[:12]


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with `SPECIALS` at ids 0..len(SPECIALS)-1; deterministic for fixed input."""
    if vocab_size < len(SPECIALS) + 256:
        raise ValueError(f"vocab_size must be at least {len(SPECIALS) + 256} (specials + 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """The book's tokenizer for the standard-library corpus (trained on its train split; cached)."""
    train_docs = corpus()["train"]
    path = _text_dir() / f"bpe-{vocab_size}-{corpus_digest(train_docs)}-v{VERSION}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = train_tokenizer([d.text for d in train_docs], vocab_size)
    atomic_write(path, lambda p: tok.save(str(p)))
    return tok


def encode_docs(tok: Tokenizer, docs: list[Doc]) -> list[list[int]]:
    """Token ids of each document (no special tokens added)."""
    return [e.ids for e in tok.encode_batch([d.text for d in docs])]


def token_stream(split: str, vocab_size: int = 1024) -> torch.Tensor:
    """All documents of a split as one 1-D int64 tensor, each document followed by `EOS` (cached)."""
    docs = corpus()[split]
    path = _text_dir() / f"stream-{split}-{vocab_size}-{corpus_digest(docs)}-v{VERSION}.pt"
    if path.exists():
        return torch.load(path)
    ids = [i for doc in encode_docs(tokenizer(vocab_size), docs) for i in doc + [EOS]]
    stream = torch.tensor(ids, dtype=torch.int64)
    atomic_write(path, lambda p: torch.save(stream, p))
    return stream


def random_chunks(stream: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """`batch` windows of `length` consecutive tokens at uniformly random offsets: (batch, length), on the
    generator's device (offsets are drawn there; the stream may stay on the CPU)."""
    starts = torch.randint(0, len(stream) - length + 1, (batch,), generator=gen, device=gen.device)
    rows = starts[:, None] + torch.arange(length, device=gen.device)  # (batch, length) positions
    return stream[rows.to(stream.device)].to(gen.device)


def module_stream(module: str, split: str, vocab_size: int = 1024) -> torch.Tensor:
    """The documents of one module in a split as one 1-D token stream, each followed by `EOS`: a
    narrow target domain for adapting a language model pretrained on the whole corpus."""
    docs = [d for d in corpus()[split] if d.module == module]
    if not docs:
        raise ValueError(f"no documents of module {module!r} in split {split!r}")
    return torch.tensor([i for doc in encode_docs(tokenizer(vocab_size), docs) for i in doc + [EOS]], dtype=torch.int64)


def labelled_texts(split: str, n_classes: int, per_class: int | None = None) -> tuple[list[str], torch.Tensor, list[str]]:
    """The module-classification task as raw text (for a pretrained encoder with its own tokenizer):
    the `n_classes` modules with the most training docstrings (the language reference excluded);
    returns texts, labels (N,) and the class names. `per_class` keeps the first documents of each class."""
    counts = Counter(d.module for d in corpus()["train"] if d.module != "reference")
    names = sorted(m for m, _ in counts.most_common(n_classes))
    docs = [d for d in corpus()[split] if d.module in names]
    if per_class is not None:
        kept: Counter[str] = Counter()
        docs = [d for d in docs if (kept.update([d.module]) or kept[d.module] <= per_class)]
    return [d.text for d in docs], torch.tensor([names.index(d.module) for d in docs]), names


def labelled_docs(split: str, n_classes: int, length: int, vocab_size: int = 1024,
                  per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A text-classification task: which module a docstring comes from.

    The `n_classes` modules with the most training docstrings (the language reference excluded) are
    the classes; each document's first `length` tokens (right-padded with `PAD`) are the input.
    Returns ids (N, length), labels (N,) and the class names. `per_class` caps the documents per class
    (the first ones in corpus order), which keeps the classes balanced.
    """
    texts, labels, names = labelled_texts(split, n_classes, per_class)
    return encode_padded(texts, length, vocab_size), labels, names


def encode_padded(texts: list[str], length: int, vocab_size: int = 1024) -> torch.Tensor:
    """Token ids (N, length) of each text's first `length` tokens, right-padded with `PAD`."""
    ids = torch.full((len(texts), length), PAD, dtype=torch.int64)
    for row, enc in enumerate(tokenizer(vocab_size).encode_batch(texts)):
        doc = enc.ids[:length]
        ids[row, :len(doc)] = torch.tensor(doc, dtype=torch.int64)
    return ids
