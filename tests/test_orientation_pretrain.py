"""Self-pretraining on the matching task and label-efficiency probes (ptmlib.orientation.pretrain)."""
import math

import pytest
import torch
import torch.nn.functional as F

from ptmlib import lm
from ptmlib.ensemble import EnsembleTransformer, member_state, stack_members
from ptmlib.objectives.denoising import IGNORE
from ptmlib.orientation import pretrain as pt
from ptmlib.text import MASK, PAD

TASK = pt.MatchTask(half=6, n_symbols=10, max_edits=3, min_edits=2)


def test_match_task_halves_match_or_differ_by_the_stated_number_of_edits():
    ids, y = TASK.sample(500, torch.Generator().manual_seed(0))
    assert ids.shape == (500, 12) and y.shape == (500,)
    assert ids.min() >= pt.FIRST and ids.max() < TASK.match  # symbols only; the label tokens never appear
    edits = (ids[:, :6] != ids[:, 6:]).sum(1)
    assert (edits[y == 0] == 0).all()
    assert ((edits[y == 1] >= 2) & (edits[y == 1] <= 3)).all()
    assert 0.4 < y.float().mean() < 0.6
    assert TASK.classes == [TASK.match, TASK.match + 1] and TASK.vocab_size == TASK.match + 2


def test_member_batches_share_rows_and_mask_only_pretraining_members():
    ids, y = TASK.sample(50, torch.Generator().manual_seed(1))
    pre = torch.tensor([True, False, True])
    inputs, targets, labels = pt.member_batches(ids, y, pre, 8, 0.5, TASK.match, torch.Generator().manual_seed(2))
    assert inputs.shape == targets.shape == (3, 8, 12) and labels.shape == (3, 8)
    assert (labels[0] == labels[1]).all() and (labels[1] == labels[2]).all()
    intact = inputs[1]  # the labelled member sees its rows unchanged, with no denoising targets
    assert (targets[1] == IGNORE).all()
    rows = [int((ids == r).all(1).nonzero()[0]) for r in intact]
    assert (y[rows] == labels[1]).all()
    for e in (0, 2):  # 6 of 12 positions chosen; targets are the originals there
        chosen = targets[e] != IGNORE
        assert (chosen.sum(1) == 6).all()
        assert (targets[e][chosen] == intact[chosen]).all()
        assert (inputs[e][~chosen] == intact[~chosen]).all()
        assert (inputs[e] == MASK).any()


def _model(E=2, seed=0):
    torch.manual_seed(seed)
    return lm.ensemble_lm(E, TASK.vocab_size, 16, 2, 2, max_len=TASK.length)


def test_member_losses_with_a_zero_read_out_are_log_of_the_number_of_outcomes():
    m = _model()
    with torch.no_grad():
        m.read_out.weight.zero_()
    ids, y = TASK.sample(40, torch.Generator().manual_seed(3))
    pre = torch.tensor([True, False])
    inputs, targets, labels = pt.member_batches(ids, y, pre, 16, 0.3, TASK.match, torch.Generator().manual_seed(4))
    losses = pt.arm_losses(m, inputs, targets, labels, pre, TASK.classes)
    assert torch.allclose(losses, torch.tensor([math.log(TASK.vocab_size), math.log(2)]), atol=1e-5)


def test_paired_members_with_the_same_schedule_stay_identical_and_pretraining_changes_them():
    m = _model(E=3)
    m.load_state_dict(stack_members([member_state(m, 0)] * 3))  # three copies of member 0
    ids, y = TASK.sample(64, torch.Generator().manual_seed(5))
    done = []
    pt.self_pretrain(m, ids, y, [0, 0, 4], 8, 16, 1e-2, 0.3, TASK, torch.Generator().manual_seed(6), warmup=2,
                     callback=done.append)
    assert done == list(range(1, 9))
    w = m.blocks[0].qkv.weight
    assert torch.equal(w[0], w[1])  # same init, same batches, same objective: the same computation
    assert not torch.allclose(w[0], w[2])


def test_sequence_accuracy_of_a_constant_classifier_is_the_share_of_its_class():
    m = _model()
    with torch.no_grad():
        m.read_out.weight.zero_()
        m.read_out.bias.zero_()
        m.read_out.bias[0, 0, TASK.match + 1] = 1.0  # member 0 always says 'differ'
        m.read_out.bias[1, 0, TASK.match] = 1.0  # member 1 always says 'match'
    ids, y = TASK.sample(300, torch.Generator().manual_seed(7))
    acc = pt.sequence_accuracy(m, ids, y, TASK.classes, chunk=64)
    share = y.float().mean()
    assert torch.allclose(acc, torch.stack([share, 1 - share]))


def test_copy_accuracy_of_a_model_that_always_says_one_symbol():
    m = _model(E=1)
    with torch.no_grad():
        m.read_out.weight.zero_()
        m.read_out.bias.zero_()
        m.read_out.bias[0, 0, pt.FIRST + 3] = 1.0
    acc = pt.copy_accuracy(m, TASK, 2000, torch.Generator().manual_seed(8))
    assert acc.shape == (1,) and abs(float(acc) - 1 / TASK.n_symbols) < 0.03  # symbols are uniform


def test_label_ladder_is_nested_and_balanced():
    labels = torch.arange(3).repeat_interleave(10)[torch.randperm(30, generator=torch.Generator().manual_seed(9))]
    ladder = pt.label_ladder(labels, [1, 2, 5], torch.Generator().manual_seed(10))
    for k, rows in zip([1, 2, 5], ladder):
        assert torch.equal(torch.bincount(labels[rows], minlength=3), torch.full((3,), k))
        assert torch.equal(rows, rows.sort().values)
    assert set(ladder[0].tolist()) <= set(ladder[1].tolist()) <= set(ladder[2].tolist())
    with pytest.raises(ValueError):
        pt.label_ladder(labels, [11], torch.Generator().manual_seed(10))


def test_probes_learn_separable_classes_and_an_untrained_probe_predicts_class_zero():
    g = torch.Generator().manual_seed(11)
    y = torch.arange(4).repeat(25)
    x = F.one_hot(y, 4).float() * 3 + 0.1 * torch.randn(100, 4, generator=g)
    subsets = [torch.arange(8), torch.arange(100)]
    heads = pt.train_probes(x, y, subsets, 4, 200, g)
    assert (heads(x.expand(2, -1, -1)).argmax(-1) == y).all()
    untrained = pt.train_probes(x, y, subsets, 4, 1, g)  # one step at warm-up learning rate 0
    assert (untrained(x.expand(2, -1, -1)).argmax(-1) == 0).all()


def test_pooled_logits_ignore_padding_and_the_token_classifiers_learn():
    torch.manual_seed(12)
    m = EnsembleTransformer(2, 0, 3, 16, 1, 2, max_len=10, vocab_size=40)
    ids = torch.randint(30, 40, (2, 4, 6))
    padded = F.pad(ids, (0, 4), value=PAD)  # (2, 4, 10): the same texts with four PADs appended
    assert torch.allclose(pt.pooled_logits(m, ids), pt.pooled_logits(m, padded), atol=1e-5)
    # the class is the first token mod 3: learnable from tokens alone
    g = torch.Generator().manual_seed(13)
    x = torch.randint(30, 40, (60, 6), generator=g)
    y = x[:, 0] % 3
    pt.train_token_classifiers(m, x, y, [torch.arange(60), torch.arange(60)], 150, g, lr=1e-2, warmup=5)
    with torch.no_grad():
        acc = (pt.pooled_logits(m, x.expand(2, -1, -1)).argmax(-1) == y).float().mean(1)
    assert (acc > 0.9).all()


def test_labels_to_reach_interpolates_in_log_labels():
    assert pt.labels_to_reach([2, 4, 8], [0.2, 0.4, 0.6], 0.5) == pytest.approx(2 ** 2.5)
    assert pt.labels_to_reach([2, 4, 8], [0.7, 0.8, 0.9], 0.5) == 2.0
    assert pt.labels_to_reach([2, 4, 8], [0.2, 0.3, 0.4], 0.5) == math.inf
