"""Optimisers and schedules: LARS against a naive reference, parameter exclusion, lr scaling,
the warm-up/cosine lr schedule and the cosine EMA momentum schedule."""

import math

import pytest
import torch
from torch import nn

from hpsearch.training.optim import LARS, build_optimizer, warmup_cosine
from hpsearch.config.schema import OptimizerConfig


def reference_lars(params, grads_per_step, *, lr, momentum, weight_decay, eta, clip_lr, adapt, eps=1e-8):
    """LARS written out per parameter and per element of the formula (You et al. 2017, solo-learn)."""
    params = [p.clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            update = g + weight_decay * p
            if adapt:
                p_norm = math.sqrt(float((p * p).sum()))
                g_norm = math.sqrt(float((g * g).sum()))
                if p_norm > 0 and g_norm > 0:
                    local = eta * p_norm / (g_norm + weight_decay * p_norm + eps)
                    if clip_lr:
                        local = min(local / lr, 1.0)
                else:
                    local = 1.0
                update = update * local
            buffers[i] = momentum * buffers[i] + update
            params[i] = p - lr * buffers[i]
    return params


def random_problem(grad_scale: float, zero_param: bool):
    """Three parameters (a matrix, a vector, optionally an all-zero matrix) and 3 steps of gradients."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (5,), (3, 2)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    if zero_param:
        params[2].zero_()
    grads = [[grad_scale * torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(3)]
    return params, grads


@pytest.mark.parametrize(("lr", "momentum", "weight_decay", "eta", "clip_lr", "grad_scale", "zero_param"), [
    (0.5, 0.9, 1e-4, 0.02, True, 1.0, False),  # clipping inactive: eta * trust / lr < 1
    (0.05, 0.9, 1e-4, 0.02, True, 1e-3, False),  # tiny gradients: the clip binds (local lr = lr)
    (0.05, 0.9, 1e-4, 0.02, False, 1e-3, False),  # same without clipping: large local lr
    (0.3, 0.0, 0.0, 0.001, False, 1.0, False),  # no momentum, no decay
    (0.3, 0.9, 1e-2, 0.02, True, 1.0, True),  # an all-zero parameter: trust ratio 1
])
@pytest.mark.parametrize("adapt", [True, False])
def test_lars_matches_the_reference(lr, momentum, weight_decay, eta, clip_lr, grad_scale, zero_param, adapt):
    params, grads = random_problem(grad_scale, zero_param)
    expected = reference_lars(params, grads, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                              clip_lr=clip_lr, adapt=adapt)
    tensors = [nn.Parameter(p.clone()) for p in params]
    opt = LARS(tensors, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr, adapt=adapt)
    for step_grads in grads:
        for t, g in zip(tensors, step_grads):
            t.grad = g.clone()
        opt.step()
    # Rule: every parameter follows the trust-ratio formula with decay and momentum, step after step.
    for t, e in zip(tensors, expected):
        torch.testing.assert_close(t.detach(), e, rtol=1e-12, atol=1e-12)


def test_lars_clipping_caps_the_step_at_the_global_lr():
    p = nn.Parameter(torch.ones(4, 4, dtype=torch.float64))
    opt = LARS([p], lr=0.1, momentum=0.0, eta=0.02, clip_lr=True)
    p.grad = torch.full_like(p, 1e-4)  # trust = 0.02 * 4 / 4e-4 = 200, far above 1
    opt.step()
    # Rule: with clipping a layer's step is at most lr * grad (min(eta * trust / lr, 1) = 1).
    torch.testing.assert_close(p.detach(), torch.full_like(p, 1 - 0.1 * 1e-4))


def lars_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def test_build_optimizer_excludes_biases_and_norms_from_lars_adaptation_and_decay():
    model = lars_model()
    cfg = OptimizerConfig(name="lars", lr=0.4, momentum=0.9, weight_decay=1e-2)
    opt = build_optimizer(model, cfg, batch_size=256)
    adapted, excluded = opt.param_groups
    # Rule: matrices are adapted and decayed; biases and norm parameters (ndim <= 1) are neither.
    assert all(p.ndim > 1 for p in adapted["params"]) and adapted["adapt"] and adapted["weight_decay"] == 1e-2
    assert all(p.ndim <= 1 for p in excluded["params"]) and not excluded["adapt"] and excluded["weight_decay"] == 0.0
    # Rule: the schema's LARS defaults reach the optimizer (eta 0.02 and clipping, as in solo-learn).
    assert adapted["eta"] == 0.02 and adapted["clip_lr"] is True

    model(torch.randn(8, 6)).square().mean().backward()
    before = {id(p): p.detach().clone() for p in model.parameters()}
    grads = {id(p): p.grad.clone() for p in model.parameters()}
    opt.step()
    for p in excluded["params"]:
        # Rule: an excluded parameter takes a plain SGD step, lr * grad (first step: buffer = grad).
        torch.testing.assert_close(p.detach(), before[id(p)] - 0.4 * grads[id(p)])
    for p in adapted["params"]:
        # Rule: an adapted parameter does not (its step is rescaled by the trust ratio and decayed).
        assert not torch.allclose(p.detach(), before[id(p)] - 0.4 * grads[id(p)])


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)])
@pytest.mark.parametrize(("base_lr", "batch_size", "expected_lr"), [(0.3, 256, 0.3), (0.3, 512, 0.6), (1.0, 64, 0.25)])
def test_lr_is_given_per_256_images(name, kind, base_lr, batch_size, expected_lr):
    opt = build_optimizer(lars_model(), OptimizerConfig(name=name, lr=base_lr), batch_size)
    # Rule: the study's optimizer name picks the class.
    assert type(opt) is kind
    # Rule: lr = base lr * batch_size / 256, in every parameter group.
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([expected_lr] * 2)
    # Rule: weight decay only on parameters with ndim > 1, whatever the optimizer.
    assert [g["weight_decay"] for g in opt.param_groups] == [OptimizerConfig().weight_decay, 0.0]


@pytest.mark.parametrize(("warmup", "total", "step", "factor"), [
    (10, 110, 0, 0.1),  # warm-up starts at lr / warmup_steps, not 0 (the first step must move)
    (10, 110, 4, 0.5),  # linear in between
    (10, 110, 9, 1.0),  # the last warm-up step reaches the base lr
    (10, 110, 10, 1.0),  # the cosine starts at the base lr
    (10, 110, 60, 0.5),  # halfway through the cosine: half the base lr
    (10, 110, 110, 0.0),  # 0 at total_steps
    (0, 100, 0, 1.0),  # no warm-up: cosine from the first step
    (0, 100, 25, 0.5 * (1 + math.cos(math.pi / 4))),
])
def test_warmup_cosine_values(warmup, total, step, factor):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = warmup_cosine(opt, warmup, total)
    for _ in range(step):
        opt.step()
        scheduler.step()
    # Rule: lr(step) = base lr * (linear warm-up, then half cosine to 0).
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * factor, abs=1e-12)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lr": -0.1}, "lr >= 0"),
    ({"lr": 0.1, "momentum": 1.0}, "momentum < 1"),
    ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay >= 0"),
    ({"lr": 0.1, "eta": 0.0}, "eta > 0"),
])
def test_lars_rejects_invalid_arguments(kwargs, message):
    # Rule: constructor arguments are validated up front, naming the argument and its value.
    with pytest.raises(ValueError, match=message):
        LARS([nn.Parameter(torch.zeros(2))], **kwargs)
