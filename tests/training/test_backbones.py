"""The backbone contract, checked for every registered backbone: shapes, stems, input checks, gradients."""

import pytest
import torch
from torch import nn

from hpsearch.training.backbones import BACKBONES, build_backbone
from hpsearch.config.schema import ModelConfig

SIZE = 16  # small enough for every backbone (ImageNet-stem ResNets reach 1x1 at layer4) and fast on a CPU


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    # Batches of 2 gain nothing from threads, and on a busy 2-core machine OpenMP threads waiting
    # on each other made these tests several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# Every registered backbone with the feature dimension its architecture gives (width=8 for small_cnn).
FEATURE_DIMS = {
    "small_cnn": 64,  # 8 * width
    "resnet18": 512,  # torchvision's fc.in_features
    "resnet34": 512,
    "resnet50": 2048,
    "vit_tiny": 192,  # embedding width
    "vit_small": 384,
}


def test_every_registered_backbone_is_checked():
    # Rule: the contract below runs over the whole registry; a new backbone must be added here.
    assert set(FEATURE_DIMS) == set(BACKBONES)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_every_backbone_maps_images_to_finite_features_and_gradients(name, in_channels):
    backbone, feature_dim = build_backbone(ModelConfig(backbone=name, width=8), in_channels, SIZE)
    # Rule: feature_dim follows from the architecture and is the attribute of the built module.
    assert feature_dim == FEATURE_DIMS[name] == backbone.feature_dim
    images = torch.randn(2, in_channels, SIZE, SIZE)
    features = backbone(images)
    # Rule: the output is [N, feature_dim].
    assert features.shape == (2, feature_dim)
    # Rule: a forward and backward pass stay finite, and every parameter receives a gradient.
    features.square().mean().backward()
    assert torch.isfinite(features).all()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters())


@pytest.mark.parametrize(("cifar_stem", "image_size", "expect_cifar"), [
    (True, 32, True),
    (False, 32, False),
    (None, 32, True),  # null = CIFAR stem up to 64 px
    (None, 64, True),
    (None, 96, False),
])
def test_resnet_stem(cifar_stem, image_size, expect_cifar):
    net, _ = build_backbone(ModelConfig(backbone="resnet18", cifar_stem=cifar_stem), 1, image_size)
    # Rule: conv1 takes the data's channels whatever the stem.
    assert net.conv1.in_channels == 1
    if expect_cifar:
        # Rule: the CIFAR stem is a 3x3 stride-1 conv1 and no max-pool anywhere.
        assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((3, 3), (1, 1), (1, 1))
        assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    else:
        # Rule: the ImageNet stem keeps the 7x7 stride-2 conv1 and the max-pool.
        assert (net.conv1.kernel_size, net.conv1.stride) == ((7, 7), (2, 2))
        assert isinstance(net.maxpool, nn.MaxPool2d)


def test_resnet_has_no_classifier():
    net, feature_dim = build_backbone(ModelConfig(backbone="resnet18"), 3, SIZE)
    # Rule: the classification fc is gone (the features are the pooled layer4 output).
    assert isinstance(net.fc, nn.Identity)
    assert not any(isinstance(m, nn.Linear) for m in net.modules())


@pytest.mark.parametrize(("patch_size", "image_size", "tokens"), [(4, 32, 64), (2, 16, 64), (4, 12, 9), (16, 16, 1)])
def test_vit_patch_size_sets_the_token_count(patch_size, image_size, tokens):
    net, _ = build_backbone(ModelConfig(backbone="vit_tiny", patch_size=patch_size), 3, image_size)
    # Rule: (image_size / patch_size)^2 patch tokens plus the class token.
    assert net.seq_length == tokens + 1
    # Rule: the classification head is removed; the features are the class token.
    assert isinstance(net.heads, nn.Identity)


@pytest.mark.parametrize(("patch_size", "image_size"), [(5, 32), (3, 16), (32, 16)])
def test_vit_patch_size_must_divide_the_image_size(patch_size, image_size):
    # Rule: a patch size that does not divide the image is refused with a message naming the
    # field and listing the valid values.
    with pytest.raises(ValueError, match=r"model\.patch_size: .* does not divide data\.image_size") as err:
        build_backbone(ModelConfig(backbone="vit_tiny", patch_size=patch_size), 3, image_size)
    assert "expected one of [1, 2, 4, 8, 16" in str(err.value)


def test_width_is_read_only_by_small_cnn():
    def n_params(name, width):
        net, _ = build_backbone(ModelConfig(backbone=name, width=width), 3, SIZE)
        return sum(p.numel() for p in net.parameters())

    # Rule: small_cnn scales with model.width; ResNet ignores it (documented, so that a study can
    # search over backbones with one fixed model section).
    assert n_params("small_cnn", 8) < n_params("small_cnn", 16)
    assert n_params("resnet18", 8) == n_params("resnet18", 16)
