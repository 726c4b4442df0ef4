"""`ptm.train` under torchrun: two CPU processes (gloo) with the global batch split between them give the losses
and weights of one process with the same global batch."""
import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from ptmlib.train import shard

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import ptmlib as ptm

    P = ptm.setup("smoke", seed=0, quiet=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    w = torch.arange(1.0, 5.0)

    def batch_fn(gen):  # a global batch of 8 noisy linear targets
        x = torch.randn(8, 4, generator=gen)
        return x, x @ w + 0.1 * torch.randn(8, generator=gen)

    seen = []  # the rows this process trained on, step by step

    def loss_fn(m, b):
        seen.append(b[0].tolist())
        return (m(b[0]).squeeze(-1) - b[1]).pow(2).mean()

    hist = ptm.train(model, batch_fn, loss_fn, ptm.TrainConfig(num_steps=60, lr=3e-2, log_every=10), P,
                     examples_per_step=8)
    json.dump(seen, open(sys.argv[1] + ".rows" + os.environ.get("RANK", "0"), "w"))
    if int(os.environ.get("RANK", "0")) == 0:
        json.dump({"loss": hist.loss, "weights": [p.detach().flatten().tolist() for p in model.parameters()]},
                  open(sys.argv[1], "w"))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_splits_every_tensor_of_a_batch():
    batch = (torch.arange(6), {"y": torch.arange(6) * 10}, 3)
    assert shard(batch, 1, 2)[0].tolist() == [3, 4, 5] and shard(batch, 1, 2)[1]["y"].tolist() == [30, 40, 50]
    assert shard(batch, 0, 3)[2] == 3
    with pytest.raises(ValueError, match="does not split over 4 ranks"):
        shard(torch.arange(6), 0, 4)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(_free_port()), str(script), str(tmp_path / "two.json")], check=True, capture_output=True)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    rows = {n: json.loads((tmp_path / n).read_text()) for n in ("one.json.rows0", "two.json.rows0", "two.json.rows1")}
    assert all(len(r) == 4 for r in rows["two.json.rows0"])  # each rank trains on half of every global batch
    assert [a + b for a, b in zip(rows["two.json.rows0"], rows["two.json.rows1"])] == rows["one.json.rows0"]
    assert len(one["loss"]) == 6 and one["loss"][-1] < one["loss"][0] / 2  # it learns
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    for a, b in zip(one["weights"], two["weights"]):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
