"""B-cos layers, B-cosification and the concept bottleneck: exact identities and known answers."""
import torch
from torch import nn

from ptmlib.peft import interpret


def test_bcos_unit_is_linear_at_b1_and_suppresses_misaligned_inputs():
    layer = interpret.BcosLinear(2, 1, b=1.0).requires_grad_(False)
    layer.weight.copy_(torch.tensor([[2.0, 0.0]]))  # normalised to (1, 0)
    aligned, oblique = torch.tensor([[3.0, 0.0]]), torch.tensor([[3.0, 3.0]])
    assert float(layer(aligned)) == 3.0 and float(layer(oblique)) == 3.0
    layer.b = 2.0  # |cos|^(B-1) scales the oblique input by cos 45 degrees
    assert float(layer(aligned)) == 3.0 and abs(float(layer(oblique)) - 3.0 / 2 ** 0.5) < 1e-5


def test_bcosify_copies_the_pretrained_weights_and_is_dynamic_linear():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 3), nn.GELU())
    head = nn.Linear(3, 2)
    model = interpret.bcosify(body, head, b=2.0)
    w0 = model.layers[0].weight
    assert torch.equal(w0[:, :4], body[0].weight) and torch.equal(w0[:, 4:], torch.zeros(3, 4))
    x = interpret.encode(torch.rand(5, 4))
    assert x.shape == (5, 8) and torch.allclose(x[:, :4] + x[:, 4:], torch.ones(5, 4))
    target = torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        logits = model(x).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(interpret.contributions(model, x, target).sum(-1), logits, atol=1e-5)
    assert not model.layers[0].detach  # restored after the explanation


def test_alignment_of_a_linear_model_is_the_cosine_of_its_weight_row():
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0, 0.0]])
    assert abs(float(interpret.alignment(model, x, torch.tensor([0]))) - 2 ** -0.5) < 1e-6
    assert abs(float(interpret.alignment(model, x, torch.tensor([1]))) - 0.5) < 1e-6


def test_concept_table_gives_every_digit_a_distinct_code():
    codes = {tuple(r.tolist()) for r in interpret.DIGIT_CONCEPTS}
    assert len(codes) == 10 and interpret.DIGIT_CONCEPTS.shape == (10, len(interpret.CONCEPTS))


def test_energy_inference_matches_brute_force_and_respects_interventions():
    torch.manual_seed(0)
    model = interpret.ConceptModel(5, 3, 4, hidden=6)
    f = torch.randn(6, 5)
    with torch.no_grad():
        c, y = model.energy_predict(f, lam=0.5)
        for b in range(6):  # brute force over the 8 x 4 assignments
            best = None
            for i in range(8):
                cand = torch.tensor([(i >> k) & 1 for k in range(3)], dtype=torch.float32)
                logit = model.concepts(f[b])
                e_c = torch.nn.functional.binary_cross_entropy_with_logits(logit, cand, reduction="sum")
                for cls in range(4):
                    e = e_c - model.from_concepts(cand).log_softmax(-1)[cls] - 0.5 * model.direct(f[b]).log_softmax(-1)[cls]
                    if best is None or e < best[0]:
                        best = (e, cand, cls)
            assert torch.equal(c[b], best[1]) and int(y[b]) == best[2]
        known = torch.tensor([[True, False, False]] * 6)
        values = torch.tensor([[1.0, 0.0, 0.0]] * 6)
        c2, _ = model.energy_predict(f, known, values)
        c3, _ = model.cbm_predict(f, known, values)
    assert (c2[:, 0] == 1).all() and (c3[:, 0] == 1).all()
