"""Frozen backbone features of images, the input of every probe and proxy.

Extracted in chunks sized to the memory at hand: a fixed 1,024 images of ResNet-50 or a ViT at
96 px and more runs a GPU out of memory where training, at its own batch size, fits. On CUDA the
chunk is sized from one small probe pass (the activation memory per image) and the free memory,
and the backbone runs under bf16 autocast where the GPU computes bf16 natively (as training does,
`training.precision: auto`); the features come back float32 either way. On the CPU nothing
changes: 1,024-image chunks in float32, so results stay bit-exact for a seed.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

CPU_CHUNK = 1024  # images per chunk on the CPU: its RAM is rarely the limit, and chunks fix results
MAX_CHUNK = 1024  # nor more on a GPU: past a few hundred images a chunk gains nothing in speed
PROBE_IMAGES = 8  # the pass that measures activation memory per image
MEMORY_FRACTION = 0.5  # of the free GPU memory a chunk may fill: room for the allocator's fragmentation


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, mean: Tensor, std: Tensor, batch_size: int | None = None,
                     autocast: bool | None = None) -> Tensor:
    """Backbone features [N, D] float32 of uint8 images [N, C, H, W], in eval mode (BatchNorm uses
    running stats).

    `batch_size`: images per chunk; None sizes it to the memory (see the module docstring).
    `autocast`: run the backbone under bf16 autocast; None: on CUDA where bf16 is native.
    """
    was_training = backbone.training
    backbone.eval()
    scale, shift = std.view(1, -1, 1, 1), mean.view(1, -1, 1, 1)
    if autocast is None:
        autocast = images.device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    mixed = torch.autocast(images.device.type, dtype=torch.bfloat16) if autocast else nullcontext()

    def forward(chunk: Tensor) -> Tensor:
        with mixed:
            return backbone((chunk.float().div(255) - shift) / scale).float()

    try:
        chunk = batch_size or _chunk_size(forward, images)
        return torch.cat([forward(part) for part in images.split(chunk)])
    finally:
        backbone.train(was_training)


def chunk_for_memory(bytes_per_image: float, free_bytes: float, fraction: float = MEMORY_FRACTION,
                     cap: int = MAX_CHUNK) -> int:
    """The images per chunk whose activations fill at most `fraction` of `free_bytes`, in [1, cap]."""
    if bytes_per_image <= 0:
        return cap
    return int(max(1, min(cap, fraction * free_bytes // bytes_per_image)))


def _chunk_size(forward, images: Tensor) -> int:
    """CPU_CHUNK on the CPU; on CUDA from one pass over PROBE_IMAGES images: the memory it allocated
    beyond what was held before, per image, against the free memory. Read from the caching
    allocator's counters at module boundaries: resetting its peak statistics would spoil the
    peaks that benchmarks/peak_memory.py reads."""
    if images.device.type != "cuda":
        return CPU_CHUNK
    probe = images[:PROBE_IMAGES]
    before = torch.cuda.memory_allocated(images.device)
    peak = _peak_during(forward, probe)
    free, _ = torch.cuda.mem_get_info(images.device)
    reusable = torch.cuda.memory_reserved(images.device) - torch.cuda.memory_allocated(images.device)
    return chunk_for_memory((peak - before) / max(1, len(probe)), free + reusable)


def _peak_during(forward, probe: Tensor) -> int:
    """The most memory allocated at any module boundary of one forward pass over `probe`."""
    device, peak = probe.device, [torch.cuda.memory_allocated(probe.device)]

    def record(*_):
        peak[0] = max(peak[0], torch.cuda.memory_allocated(device))

    hook = nn.modules.module.register_module_forward_hook(record)
    try:
        forward(probe)
    finally:
        hook.remove()
    return peak[0]
