import json

import pytest
import torch

from ptmlib.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from ptmlib.models import tiny_gpt2


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def broken(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


def test_checkpoint_round_trip_with_tied_weights(tmp_path):
    torch.manual_seed(0)
    model = tiny_gpt2(vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    state = {"optimizer": {"lr": 0.1}, "history": {"loss": [1.0, 0.5]}, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path, model, state, step=3, done=False)
    save_checkpoint(tmp_path, model, state, step=7, done=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step7.safetensors", "step7.state.pt"]
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 7

    torch.manual_seed(1)
    other = tiny_gpt2(vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    step, done, loaded = load_checkpoint(tmp_path, other)
    assert (step, done) == (7, True) and loaded["history"]["loss"] == [1.0, 0.5]
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert other.lm_head.weight.data_ptr() == other.transformer.wte.weight.data_ptr()  # still tied


def test_no_checkpoint_means_none(tmp_path):
    assert load_checkpoint(tmp_path, torch.nn.Linear(2, 2)) is None
