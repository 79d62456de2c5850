"""Evaluation within the memory training fits in (issue 14, item 8): features extracted in chunks
sized to the memory, under autocast on a GPU but returned in float32; the kNN similarity built a
block of queries at a time, never whole. On the CPU the results stay what they were."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hpsearch.config.schema import ModelConfig
from hpsearch.evaluation import features as features_module
from hpsearch.evaluation import knn as knn_module
from hpsearch.evaluation.features import chunk_for_memory, extract_features
from hpsearch.evaluation.knn import knn_accuracy, knn_predict
from hpsearch.training.backbones import build_backbone


class LargestTensor(TorchDispatchMode):
    """The largest tensor (in elements) any op produced while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def clustered(n: int, d: int = 16, classes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g)
    return centres[labels] + 0.8 * torch.randn(n, d, generator=g), labels


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("block_rows", [1, 7, 64, 1000])
def test_knn_in_blocks_predicts_what_the_whole_matrix_does(block_rows, exclude_self):
    bank, labels = clustered(150)
    queries = bank if exclude_self else clustered(90, seed=1)[0]
    whole = knn_predict(bank, labels, queries, 20, 0.07, 5, exclude_self=exclude_self, block_rows=10**9)
    blocked = knn_predict(bank, labels, queries, 20, 0.07, 5, exclude_self=exclude_self, block_rows=block_rows)
    # The rule: the block size changes no prediction (exactly, on the CPU).
    assert torch.equal(blocked, whole)


def test_knn_never_builds_the_whole_similarity_matrix(monkeypatch):
    bank, labels = clustered(200)
    expected = knn_accuracy(bank, labels, 20, 0.07, 5)
    monkeypatch.setattr(knn_module, "SIMILARITY_BLOCK", 200 * 16)  # a block of 16 queries x 200 bank items
    with LargestTensor() as seen:
        blocked = knn_accuracy(bank, labels, 20, 0.07, 5)
    # The rule: no tensor of the query x bank size exists at any time; the largest is one block.
    assert seen.largest == 16 * 200 < 200 * 200
    assert blocked == expected


def test_knn_with_no_queries_predicts_nothing():
    bank, labels = clustered(10)
    assert knn_predict(bank, labels, bank[:0], 3, 0.07, 5).shape == (0,)


@pytest.fixture(scope="module")
def backbone_and_images():
    torch.manual_seed(0)
    backbone, _ = build_backbone(ModelConfig(backbone="small_cnn", width=8), 3, 16)
    for _ in range(3):  # running statistics away from their init, as after training
        backbone(torch.rand(32, 3, 16, 16) * 4 - 2)
    images = (torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    return backbone, images, torch.full((3,), 0.5), torch.full((3,), 0.25)


def test_features_in_small_chunks_equal_one_pass(backbone_and_images):
    backbone, images, mean, std = backbone_and_images
    sizes = []
    hook = backbone.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    try:
        chunked = extract_features(backbone, images, mean, std, batch_size=6)
    finally:
        hook.remove()
    whole = extract_features(backbone, images, mean, std)  # the CPU default: 1,024 per chunk
    # The rule: chunks are what was asked for, and change the features by float rounding at most.
    assert max(sizes) == 6 and sum(sizes) == len(images)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    assert backbone.training  # put back in the mode it was in


def test_features_under_autocast_come_back_float32(backbone_and_images):
    backbone, images, mean, std = backbone_and_images
    exact = extract_features(backbone, images, mean, std, autocast=False)
    mixed = extract_features(backbone, images, mean, std, autocast=True)  # CPU autocast: CUDA's casts
    # The rule: under bf16 autocast the features are float32 and within bf16 rounding of fp32's.
    assert mixed.dtype == torch.float32
    assert (mixed - exact).abs().max() <= 0.05 * exact.abs().max()
    # The rule: on the CPU the default is float32 (results bit-exact for a seed).
    assert torch.equal(extract_features(backbone, images, mean, std), exact)


@pytest.mark.parametrize(("per_image", "free", "expected"), [
    (1e6, 1e9, 500),  # half the free memory / 1 MB per image
    (1e6, 1e12, features_module.MAX_CHUNK),  # never more than the cap
    (1e9, 1e9, 1),  # at least one image
    (0, 1e9, features_module.MAX_CHUNK),  # nothing measured
])
def test_chunk_size_follows_the_free_memory(per_image, free, expected):
    assert chunk_for_memory(per_image, free) == expected


# --------------------------------------------------------------------------------------- GPU only

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_features_and_knn_on_cuda_match_the_cpu(backbone_and_images):
    backbone, images, mean, std = backbone_and_images
    cpu = extract_features(backbone, images, mean, std)
    gpu_backbone = backbone.cuda()
    try:
        gpu = extract_features(gpu_backbone, images.cuda(), mean.cuda(), std.cuda())  # memory-sized, autocast
    finally:
        backbone.cpu()
    assert gpu.dtype == torch.float32 and gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() <= 0.05 * cpu.abs().max()
    bank, labels = clustered(3000)
    on_gpu = knn_predict(bank.cuda(), labels.cuda(), bank.cuda(), 20, 0.07, 5, exclude_self=True, block_rows=100)
    on_cpu = knn_predict(bank, labels, bank, 20, 0.07, 5, exclude_self=True)
    assert (on_gpu.cpu() == on_cpu).float().mean() >= 0.99  # near-ties may round either way on another device
