"""The trainer benchmarks' CPU side: the FLOP count against nanoGPT's closed form, and a tiny run that says plainly
that no GPU was measured."""
import pytest

from ptmlib.book.bench import GPT2_SMALL, flops_per_token, trainer_benchmarks


def test_flops_per_token_is_six_n_plus_the_attention_term():
    assert flops_per_token(1000, n_layer=2, width=8, ctx=16) == 6 * 1000 + 12 * 2 * 8 * 16
    # GPT-2 small at context 1024 (123.7M non-position parameters): the attention term is about 7% of 6N
    total = flops_per_token(123_653_376, GPT2_SMALL["n_layer"], GPT2_SMALL["width"], GPT2_SMALL["ctx"])
    assert total / (6 * 123_653_376) == pytest.approx(1.153, abs=0.01)


def test_without_cuda_the_benchmarks_run_tiny_and_say_no_gpu_was_measured(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    lines = []
    r = trainer_benchmarks("full", echo=lines.append)
    assert not r["gpu_measured"] and r["gpt"]["mfu"] is None and "no GPU was measured" in lines[0]
    assert r["gpt"]["tokens_per_s"] > 0 and r["ensemble"]["batched_s"] > 0 and r["ensemble"]["loop_s"] > 0
    assert r["ensemble"]["members"] == 4 and r["gpt"]["compiled"] is False
