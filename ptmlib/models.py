"""Tiny transformers built from `transformers` configs (random init, no downloads).

Special-token ids are set for small vocabularies (GPT-2's defaults point at id 50256), dropout is a
knob (default 0 for the book's small experiments), and attention uses PyTorch's SDPA kernel.
"""
from __future__ import annotations

import torch
from transformers import (BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, GPT2Model,
                          T5Config, T5ForConditionalGeneration)

ATTN = "sdpa"


def gpt2_config(vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int,
                dropout: float = 0.0, bos_id: int = 0, eos_id: int = 0) -> GPT2Config:
    """A GPT-2 config for a small model (4 * n_embd MLP, learned positions, tied embeddings)."""
    return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                      n_head=n_head, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                      bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id,
                      attn_implementation=ATTN)


def tiny_gpt2(vocab_size: int, n_positions: int, n_embd: int = 64, n_layer: int = 2, n_head: int = 2,
              dropout: float = 0.0) -> GPT2LMHeadModel:
    """A GPT-2 language model: (B, T) token ids -> (B, T, vocab_size) logits."""
    return GPT2LMHeadModel(gpt2_config(vocab_size, n_positions, n_embd, n_layer, n_head, dropout))


def tiny_gpt2_backbone(n_positions: int, n_embd: int = 64, n_layer: int = 2, n_head: int = 2,
                       dropout: float = 0.0) -> GPT2Model:
    """GPT-2 blocks without token embeddings in use: feed `inputs_embeds` (B, T, n_embd)."""
    return GPT2Model(gpt2_config(1, n_positions, n_embd, n_layer, n_head, dropout))


def tiny_bert(vocab_size: int, max_len: int, hidden: int = 64, n_layer: int = 2, n_head: int = 2,
              dropout: float = 0.0, pad_id: int = 0) -> BertForMaskedLM:
    """A BERT masked language model: (B, T) ids -> (B, T, vocab_size) logits."""
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=n_layer,
                     num_attention_heads=n_head, intermediate_size=4 * hidden, max_position_embeddings=max_len,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=pad_id,
                     attn_implementation=ATTN)
    return BertForMaskedLM(cfg)


def tiny_t5(vocab_size: int, d_model: int = 64, n_layer: int = 2, n_head: int = 2, dropout: float = 0.0,
            pad_id: int = 0, eos_id: int = 1) -> T5ForConditionalGeneration:
    """A T5 encoder-decoder (relative position buckets); the decoder starts from `pad_id`."""
    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // n_head, d_ff=4 * d_model,
                   num_layers=n_layer, num_decoder_layers=n_layer, num_heads=n_head, dropout_rate=dropout,
                   pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id,
                   attn_implementation=ATTN)
    return T5ForConditionalGeneration(cfg)

def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where attention_mask is 1: (B, T, C), (B, T) -> (B, C)."""
    w = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
