"""Each method's loss against an independent naive loop, analytic values, symmetry and error cases.

NT-Xent (SimCLR) has its own file, tests/objectives/test_simclr_loss.py. The naive references below are written
from the papers' equations with explicit Python loops over samples and dimensions, sharing no code
with the vectorised implementations they check.
"""

import math

import pytest
import torch
from torch import nn

from objectives.barlow_twins import barlow_twins_loss
from objectives.byol import regression_loss
from objectives.dino import dino_loss, teacher_distribution
from objectives.moco import info_nce
from objectives.momentum import ema_update
from objectives.rotation import rotate_batch
from objectives.simsiam import negative_cosine
from objectives.vicreg import (
    covariance_loss,
    invariance_loss,
    variance_loss,
    vicreg_loss,
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit(*shape, seed=0):
    return torch.nn.functional.normalize(randn(*shape, seed=seed), dim=-1)


# 4 samples x 3 dimensions, each column zero-mean with variance 4/3, columns pairwise orthogonal
# (columns 2-4 of a 4x4 Hadamard matrix): decorrelated, unit-scale embeddings.
DECORRELATED = torch.tensor([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=torch.float64)


# ------------------------------------------------------------------------------ naive references


def naive_cosine(a, b):
    dot = sum(float(x) * float(y) for x, y in zip(a, b))
    return dot / math.sqrt(sum(float(x) ** 2 for x in a) * sum(float(y) ** 2 for y in b))


def naive_byol(p, z):
    return sum(2 - 2 * naive_cosine(p[i], z[i]) for i in range(len(p))) / len(p)


def naive_simsiam(p, z):
    return sum(-naive_cosine(p[i], z[i]) for i in range(len(p))) / len(p)


def naive_column_stats(z, ddof):
    n, d = z.shape
    means = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
    variances = [sum((float(z[i, j]) - means[j]) ** 2 for i in range(n)) / (n - ddof) for j in range(d)]
    return means, variances


def naive_invariance(z1, z2):
    n, d = z1.shape
    return sum((float(z1[i, j]) - float(z2[i, j])) ** 2 for i in range(n) for j in range(d)) / (n * d)


def naive_variance(z, eps=1e-4):
    _, variances = naive_column_stats(z, ddof=1)
    return sum(max(0.0, 1 - math.sqrt(v + eps)) for v in variances) / len(variances)


def naive_covariance(z):
    n, d = z.shape
    means, _ = naive_column_stats(z, ddof=1)
    total = 0.0
    for j in range(d):
        for k in range(d):
            if j != k:
                cov = sum((float(z[i, j]) - means[j]) * (float(z[i, k]) - means[k]) for i in range(n)) / (n - 1)
                total += cov**2
    return total / d


def naive_vicreg(z1, z2, weights=(25.0, 25.0, 1.0)):
    lam, mu, nu = weights
    return (lam * naive_invariance(z1, z2) + mu * (naive_variance(z1) + naive_variance(z2)) / 2
            + nu * (naive_covariance(z1) + naive_covariance(z2)))


def naive_barlow(z1, z2, lam=0.0051, eps=1e-5):
    n, d = z1.shape
    m1, v1 = naive_column_stats(z1, ddof=0)
    m2, v2 = naive_column_stats(z2, ddof=0)
    total = 0.0
    for j in range(d):
        for k in range(d):
            c = sum((float(z1[i, j]) - m1[j]) / math.sqrt(v1[j] + eps) * (float(z2[i, k]) - m2[k]) / math.sqrt(v2[k] + eps)
                    for i in range(n)) / n
            total += (1 - c) ** 2 if j == k else lam * c**2
    return total


def naive_info_nce(q, k, queue, temperature, valid=None):
    total = 0.0
    for i in range(len(q)):
        positive = math.exp(float(q[i] @ k[i]) / temperature)
        negatives = sum(math.exp(float(q[i] @ queue[j]) / temperature)
                        for j in range(len(queue)) if valid is None or bool(valid[j]))
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


def naive_dino(student_logits, teacher_probs, student_temperature):
    n_views, n, k = student_logits.shape
    total, pairs = 0.0, 0
    for g in range(len(teacher_probs)):
        for v in range(n_views):
            if g == v:  # the teacher and the student see the same view: not a pair
                continue
            for i in range(n):
                scaled = [float(x) / student_temperature for x in student_logits[v, i]]
                log_z = math.log(sum(math.exp(x) for x in scaled))
                total += -sum(float(teacher_probs[g, i, j]) * (scaled[j] - log_z) for j in range(k)) / n
            pairs += 1
    return total / pairs


# ------------------------------------------------------------------------ against the references

REFERENCE_CASES = [
    pytest.param(lambda: (randn(6, 5), randn(6, 5, seed=1)), regression_loss, naive_byol, id="byol"),
    pytest.param(lambda: (randn(6, 5), randn(6, 5, seed=1)), negative_cosine, naive_simsiam, id="simsiam"),
    pytest.param(lambda: (randn(6, 5), randn(6, 5, seed=1)), invariance_loss, naive_invariance, id="vicreg-invariance"),
    pytest.param(lambda: (0.5 * randn(7, 4),), variance_loss, naive_variance, id="vicreg-variance"),
    pytest.param(lambda: (randn(7, 4),), covariance_loss, naive_covariance, id="vicreg-covariance"),
    pytest.param(lambda: (randn(7, 4), randn(7, 4, seed=1)), vicreg_loss, naive_vicreg, id="vicreg"),
    pytest.param(lambda: (randn(7, 4), randn(7, 4, seed=1)), barlow_twins_loss, naive_barlow, id="barlow-twins"),
    pytest.param(lambda: (unit(5, 4), unit(5, 4, seed=1), unit(9, 4, seed=2), 0.2), info_nce, naive_info_nce,
                 id="moco"),
    pytest.param(lambda: (unit(5, 4), unit(5, 4, seed=1), unit(9, 4, seed=2), 0.2, torch.arange(9) % 3 != 0),
                 info_nce, naive_info_nce, id="moco-partly-filled-queue"),
    pytest.param(lambda: (randn(4, 3, 6), torch.softmax(randn(2, 3, 6, seed=1) / 0.5, dim=-1), 0.1), dino_loss,
                 naive_dino, id="dino-2-global-2-local"),
]


@pytest.mark.parametrize("make_inputs, loss, naive", REFERENCE_CASES)
def test_matches_naive_reference(make_inputs, loss, naive):
    inputs = make_inputs()
    # The rule: the vectorised loss computes exactly the paper's equation, as the loop spells it out.
    assert loss(*inputs).item() == pytest.approx(naive(*inputs), rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------------------- analytic values

z = randn(8, 5)

ANALYTIC_CASES = [
    # (loss, inputs, expected, rule)
    pytest.param(regression_loss, (z, z.clone()), 0.0, id="byol-identical-predictions-are-its-minimum-0"),
    pytest.param(regression_loss, (z, 3 * z), 0.0, id="byol-ignores-the-scale"),
    pytest.param(regression_loss, (z, -z), 4.0, id="byol-opposite-predictions-are-its-maximum-4"),
    pytest.param(negative_cosine, (z, z.clone()), -1.0, id="simsiam-identical-predictions-are-its-minimum-minus-1"),
    pytest.param(negative_cosine, (z, -2 * z), 1.0, id="simsiam-opposite-predictions-are-its-maximum-1"),
    pytest.param(invariance_loss, (z, z.clone()), 0.0, id="vicreg-invariance-is-0-for-identical-views"),
    pytest.param(variance_loss, (3 * DECORRELATED,), 0.0, id="vicreg-variance-is-0-when-every-std-exceeds-1"),
    pytest.param(variance_loss, (torch.ones(6, 4, dtype=torch.float64),), 1 - math.sqrt(1e-4),
                 id="vicreg-variance-of-a-collapsed-embedding-is-1-minus-sqrt-eps"),
    pytest.param(covariance_loss, (DECORRELATED,), 0.0, id="vicreg-covariance-is-0-for-decorrelated-dims"),
    pytest.param(barlow_twins_loss, (DECORRELATED, DECORRELATED.clone()), 0.0,
                 id="barlow-is-0-when-the-cross-correlation-is-the-identity"),
    # C_ii = -var / (var + eps) with the biased variance 1 and BatchNorm's eps 1e-5.
    pytest.param(barlow_twins_loss, (DECORRELATED, -DECORRELATED), 3 * (1 + 1 / (1 + 1e-5)) ** 2,
                 id="barlow-anti-correlated-views-cost-4-per-dimension"),
    pytest.param(info_nce, (torch.eye(4)[:2], torch.eye(4)[:2], torch.eye(4)[2:], 0.5),
                 -math.log(math.exp(2) / (math.exp(2) + 2)), id="moco-orthogonal-queue-has-the-closed-form"),
    pytest.param(info_nce, (unit(3, 4), unit(3, 4, seed=1), unit(5, 4, seed=2), 0.2, torch.zeros(5, dtype=torch.bool)),
                 0.0, id="moco-an-empty-queue-leaves-only-the-positive"),
    pytest.param(dino_loss, (torch.zeros(4, 3, 8), torch.full((2, 3, 8), 1 / 8), 0.1), math.log(8),
                 id="dino-uniform-teacher-and-student-cost-log-K"),
]


@pytest.mark.parametrize("loss, inputs, expected", ANALYTIC_CASES)
def test_analytic_value(loss, inputs, expected):
    # The rule is the case id; the value follows from the paper's equation by hand.
    assert loss(*inputs).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("loss", [regression_loss, negative_cosine, invariance_loss, vicreg_loss, barlow_twins_loss])
def test_symmetric_in_the_two_views(loss):
    z1, z2 = randn(8, 4), randn(8, 4, seed=1)
    # The rule: swapping the views leaves the loss unchanged (cosine, MSE and the variance/covariance
    # terms are symmetric; Barlow's C becomes its transpose, which has the same diagonal and off-diagonal).
    assert loss(z1, z2).item() == pytest.approx(loss(z2, z1).item(), rel=1e-12)


def test_simsiam_stops_the_gradient_of_the_projection():
    p, z = randn(4, 3).requires_grad_(), randn(4, 3, seed=1).requires_grad_()
    negative_cosine(p, z).backward()
    # The rule: D(p, stopgrad(z)): the prediction gets a gradient, the projection none.
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_moco_masks_exactly_the_empty_queue_entries():
    q, k, queue = unit(4, 3), unit(4, 3, seed=1), unit(6, 3, seed=2)
    valid = torch.tensor([True, False, True, True, False, False])
    # The rule: an entry that holds no key is as if it were not in the queue at all.
    assert info_nce(q, k, queue, 0.3, valid).item() == pytest.approx(info_nce(q, k, queue[valid], 0.3).item(), rel=1e-12)


def test_dino_centring_removes_what_every_image_shares():
    shared = randn(1, 10).expand(5, 10)
    # The rule: identical teacher outputs carry no information about the image; once centred on
    # their mean they give the uniform distribution, whatever the temperature.
    probs = teacher_distribution(shared, shared.mean(dim=0), 0.04)
    assert torch.allclose(probs, torch.full_like(probs, 0.1))
    # The rule: the teacher gives a distribution per image.
    assert torch.allclose(teacher_distribution(randn(5, 10), randn(10, seed=1), 0.04).sum(dim=-1), torch.ones(5, dtype=torch.float64))


def test_rotations_match_a_per_image_loop():
    x = randn(7, 2, 5, 5)
    rotated, labels = rotate_batch(x)
    expected = torch.stack([torch.rot90(x[i], i % 4, dims=(-2, -1)) for i in range(7)])
    order = [i for k in range(4) for i in range(7) if i % 4 == k]
    # The rule: image i is rotated by (i % 4) quarter turns counter-clockwise and labelled i % 4.
    assert torch.equal(rotated, expected[order])
    assert labels.tolist() == [i % 4 for i in order]


def test_ema_update_matches_a_per_parameter_loop():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    # The rule: target <- m * target + (1 - m) * online, parameter by parameter.
    for old, new, source in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * source)


# ---------------------------------------------------------------------------------- error cases

ERROR_CASES = [
    pytest.param(vicreg_loss, (randn(4, 3), randn(4, 2)), "same shape", id="vicreg-shape-mismatch"),
    pytest.param(vicreg_loss, (randn(1, 3), randn(1, 3)), "N >= 2", id="vicreg-one-sample"),
    pytest.param(barlow_twins_loss, (randn(4, 3), randn(5, 3)), "same shape", id="barlow-shape-mismatch"),
    pytest.param(barlow_twins_loss, (randn(1, 3), randn(1, 3)), "N >= 2", id="barlow-one-sample"),
    pytest.param(dino_loss, (randn(1, 2, 3), torch.ones(1, 2, 3) / 3, 0.1), "V >= 2", id="dino-one-view"),
    pytest.param(dino_loss, (randn(2, 2, 3), torch.ones(3, 2, 3) / 3, 0.1), "G <= V", id="dino-more-teacher-views"),
    pytest.param(rotate_batch, (randn(2, 1, 4, 5),), "square", id="rotation-non-square"),
    pytest.param(ema_update, (nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.9), "differ",
                 id="ema-different-networks"),
]


@pytest.mark.parametrize("function, inputs, message", ERROR_CASES)
def test_invalid_inputs_are_rejected(function, inputs, message):
    # The rule: inputs the equation is not defined for fail with a message naming the problem.
    with pytest.raises(ValueError, match=message):
        function(*inputs)
