"""The contract every registered SSL method keeps, checked on a real batch of digits.

One test per rule, each parametrised over `objectives.METHODS`: registering a method is enough to
have it checked. Small on purpose (width 8, 16 px, 64 images) so the file runs in seconds on a CPU.
"""

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from hpsearch.training.backbones import build_backbone
from hpsearch.config.schema import AugmentConfig, ModelConfig, ProjectorConfig
from hpsearch.study.studyfile import load_study
from objectives import METHODS

SIZE, BATCH, STEPS = 16, 64, 20
PROJECTOR = ProjectorConfig(hidden_dim=64, output_dim=32)
AUGMENT = AugmentConfig(flip_p=0.0)  # digits are not mirror-symmetric
NAMES = sorted(METHODS)
BATCHNORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def images():
    """64 real digit scans upsampled to 16 x 16, uint8 [N, 1, H, W] as the data splits hold them."""
    x = torch.from_numpy(load_digits().images[:BATCH]).float().div(16).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def build(name, seed=0):
    torch.manual_seed(seed)
    backbone, feature_dim = build_backbone(ModelConfig(backbone="small_cnn", width=8), 1, SIZE)
    method_cls = METHODS[name]
    return method_cls(backbone, feature_dim, method_cls.Config(), PROJECTOR)


def views_of(method, images, seed=0):
    """The method's views of `images`, normalised as the trainer does (digits: mean ~0.25, std ~0.35)."""
    views = method.make_views(images, AUGMENT, SIZE, torch.Generator().manual_seed(seed))
    return [(v - 0.25) / 0.35 for v in views]


def prime(method, images):
    """One forward pass and on_step_end, as after a first step: MoCo's queue then holds keys (an
    empty queue has no negatives, so a zero loss and zero gradients) and DINO's centre a value."""
    with torch.no_grad():
        method.training_loss(views_of(method, images, seed=1))
    method.on_step_end(1, STEPS)


def optimiser(method):
    return torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)


def untrained(method):
    """What the optimiser must never touch: frozen parameters (momentum targets) and the buffers
    that are not BatchNorm statistics (queues, centres, schedules)."""
    params = {k: p for k, p in method.named_parameters() if not p.requires_grad}
    buffers = {k: b for k, b in method.named_buffers() if not k.endswith(BATCHNORM_STATISTICS)}
    return params, buffers


@pytest.mark.parametrize("name", NAMES)
def test_views_have_the_expected_count_and_shapes(name, images):
    method = build(name)
    views = method.make_views(images, AUGMENT, SIZE, torch.Generator().manual_seed(0))
    n_local = getattr(method.Config(), "n_local_crops", 0)
    # The rule: n_views views at the study's size, then any multi-crop local views, smaller.
    assert len(views) == method.n_views + n_local
    for view in views[:method.n_views]:
        assert view.shape == (BATCH, 1, SIZE, SIZE)
    for view in views[method.n_views:]:
        assert view.shape[:2] == (BATCH, 1) and view.shape[2] == view.shape[3] < SIZE
    # The rule: views are float images in [0, 1], whatever the method.
    assert all(v.dtype == torch.float32 and 0 <= v.min() and v.max() <= 1 for v in views)


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_a_finite_scalar_that_trains_the_backbone(name, images):
    method = build(name)
    prime(method, images)
    loss = method.training_loss(views_of(method, images))
    # The rule: one finite number per batch.
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters()]
    # The rule: every backbone parameter gets a finite gradient, and they are not all zero.
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", NAMES)
def test_embedding_has_one_finite_row_per_image(name, images):
    method = build(name).eval()
    with torch.no_grad():
        z = method.embed(views_of(method, images)[0])
    # The rule: the proxies (alignment, uniformity, collapse) get an [N, D] embedding per view.
    assert z.shape[0] == BATCH and z.ndim == 2 and torch.isfinite(z).all()


@pytest.mark.parametrize("name", NAMES)
def test_targets_queues_and_centres_change_only_in_on_step_end(name, images):
    method = build(name)
    prime(method, images)
    params, buffers = untrained(method)
    before = {k: t.detach().clone() for k, t in {**params, **buffers}.items()}
    opt = optimiser(method)
    method.training_loss(views_of(method, images)).backward()
    # The rule: momentum targets are outside autograd, so the optimiser never sees them.
    assert all(p.grad is None for p in params.values())
    opt.step()
    # The rule: an optimiser step leaves targets, queues and centres as they were.
    assert all(torch.equal(t, before[k]) for k, t in {**params, **buffers}.items())
    method.on_step_end(2, STEPS)
    # The rule: on_step_end moves them: EMA targets follow the online network, queues take the
    # step's keys, centres and temperature schedules advance.
    if params:
        assert any(not torch.equal(p, before[k]) for k, p in params.items())
    for k, b in buffers.items():
        assert not torch.equal(b, before[k]), f"buffer {k} did not change in on_step_end"


@pytest.mark.parametrize("name", NAMES)
def test_a_step_runs_under_bf16_autocast(name, images):
    method = build(name)
    _, buffers = untrained(method)
    dtypes = {k: b.dtype for k, b in buffers.items()}
    views = views_of(method, images)
    # The trainer computes the loss under bf16 autocast on CUDA; CPU autocast exercises the same casts.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.training_loss(views).float()
    loss.backward()
    method.on_step_end(1, STEPS)
    # The rule: mixed precision neither breaks a step nor changes the dtype of what a checkpoint holds.
    assert torch.isfinite(loss)
    assert {k: b.dtype for k, b in untrained(method)[1].items()} == dtypes


@pytest.mark.parametrize("name", NAMES)
def test_optimiser_steps_lower_the_loss_on_a_real_batch(name, images):
    method = build(name)
    prime(method, images)
    views, opt = views_of(method, images), optimiser(method)
    # The method's state (targets, queue, centre, teacher temperature) is held where the first
    # on_step_end left it, so the curve measures what the gradient does. With the state moving, the
    # loss is not a fixed objective: MoCo's rises as its queue fills (more negatives, a larger
    # log-partition) and DINO's as centring and the temperature warm-up reshape its targets.
    losses = []
    for _ in range(STEPS):
        loss = method.training_loss(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # The rule: 20 steps on one batch lower the loss: the mean of the last 5 is below the first 5's.
    assert sum(losses[-5:]) < sum(losses[:5]), losses


@pytest.mark.parametrize("name", NAMES)
def test_config_defaults_and_search_space_validate(name):
    method_cls = METHODS[name]
    # The rule: a study file that names only the method gets valid defaults, keyed by that name.
    assert method_cls.Config().method == name
    assert method_cls.Config.model_validate({"method": name}) == method_cls.Config()
    # The rule: the default search space names real study-file fields with valid ranges.
    assert method_cls.search_space, "every method proposes a default search space"
    load_study({"name": "t", "objective": {"method": name}, "search_space": method_cls.search_space})


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_restores_the_method(name, images):
    trained = build(name, seed=0)
    prime(trained, images)
    opt = optimiser(trained)
    trained.training_loss(views_of(trained, images)).backward()
    opt.step()
    trained.on_step_end(2, STEPS)
    restored = build(name, seed=1)
    restored.load_state_dict(trained.state_dict())
    _, buffers = untrained(trained)
    # The rule: queues, centres and schedules are buffers, so a checkpoint holds them.
    assert all(k in trained.state_dict() for k in buffers)
    # The rule: everything the loss depends on is in the state dict: the restored copy computes
    # the same loss on the same views.
    views = views_of(trained, images, seed=2)
    with torch.no_grad():
        assert torch.allclose(restored.training_loss(views), trained.training_loss(views), rtol=1e-6, atol=1e-7)
