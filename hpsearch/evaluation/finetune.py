"""Fine-tuning a copy of a backbone (all of it or its last blocks) with a linear head: the finetune final metric."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpsearch.evaluation.features import extract_features
from hpsearch.training.optim import warmup_cosine


def backbone_blocks(backbone: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """A backbone's blocks, first to last, and the modules with weights that follow the last one.

    - small_cnn: its conv-BatchNorm-ReLU blocks (4); nothing follows them but pooling.
    - ResNet: its residual blocks (BasicBlock / Bottleneck) of layer1..layer4, 8 in resnet18 and 16
      in resnet34/50; conv1 and bn1 are the stem.
    - ViT: its transformer blocks (encoder.layers, 12); the patch embedding, class token and position
      embedding are the stem, and the final LayerNorm follows the blocks.

    Raises ValueError for a backbone of another kind.
    """
    if all(hasattr(backbone, f"layer{i}") for i in range(1, 5)):  # torchvision ResNet
        return [block for i in range(1, 5) for block in getattr(backbone, f"layer{i}")], []
    if hasattr(backbone, "conv_proj") and hasattr(backbone, "encoder"):  # torchvision VisionTransformer
        return list(backbone.encoder.layers), [backbone.encoder.ln]
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Sequential):  # SmallCNN: a block starts at each convolution
        blocks: list[list[nn.Module]] = []
        for layer in features:
            if isinstance(layer, nn.Conv2d):
                blocks.append([])
            if blocks and isinstance(layer, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)):
                blocks[-1].append(layer)
        if blocks:
            return [nn.Sequential(*block) for block in blocks], []
    raise ValueError(f"evaluation.finetune.blocks: {type(backbone).__name__} defines no blocks; expected null "
                     "(fine-tune the whole network)")


def trainable_parts(backbone: nn.Module, blocks: int | None, name: str | None = None) -> list[nn.Module]:
    """The parts of `backbone` that fine-tuning trains: all of it (blocks=None), or its last `blocks`
    blocks and what follows them (blocks=0: none, the head alone). Raises ValueError naming
    `evaluation.finetune.blocks` when the backbone has fewer blocks."""
    if blocks is None:
        return [backbone]
    all_blocks, tail = backbone_blocks(backbone)
    if not 0 <= blocks <= len(all_blocks):
        raise ValueError(f"evaluation.finetune.blocks: expected 0 to {len(all_blocks)} (the blocks of "
                         f"{name or type(backbone).__name__}) or null for the whole network, got {blocks}")
    return [*all_blocks[len(all_blocks) - blocks:], *tail] if blocks else []


class Classifier(nn.Module):
    """A backbone with a linear head on its standardised features: normalised images -> logits."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, shift: Tensor, scale: Tensor):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.head((self.backbone(x).float() - self.shift) / self.scale)


def finetune(backbone: nn.Module, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, num_classes: int, *,
             blocks: int | None, epochs: int, batch_size: int, lr: float, weight_decay: float, flip_p: float,
             seed: int, autocast: bool = False, memory_format: torch.memory_format = torch.contiguous_format,
             name: str | None = None) -> Classifier:
    """Fine-tune a deep copy of `backbone` (see trainable_parts) with a linear head on labelled uint8
    images; returns the classifier, in eval mode. `backbone` itself is never changed.

    The head starts at zero on features standardised with the starting backbone's statistics on
    these images (as the linear probe's); AdamW (no decay on biases and norm parameters), lr decayed
    to 0 along a cosine; each epoch reshuffles and drops its last partial batch. Frozen parts stay in
    eval mode, so their BatchNorm statistics do not move either. Shuffling and flips come from a
    generator seeded with `seed`: the same seed gives the same result on the CPU.
    """
    model = copy.deepcopy(backbone)
    trainable = trainable_parts(model, blocks, name)
    model.requires_grad_(False)
    for part in trainable:
        part.requires_grad_(True)
    device = images.device
    features = extract_features(model, images, mean, std)
    head = nn.Linear(features.shape[1], num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    classifier = Classifier(model, head, features.mean(0), features.std(0).clamp_min(1e-6))
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
                                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)
    n_images = len(images)
    batch = min(batch_size, n_images)
    steps_per_epoch = n_images // batch
    scheduler = warmup_cosine(optimizer, 0, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    pixel_mean, pixel_std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    classifier.eval()
    for part in trainable:
        part.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n_images, generator=generator).to(device)
            for step in range(steps_per_epoch):
                index = order[step * batch:(step + 1) * batch]
                x = images[index].float().div(255)
                if flip_p > 0:
                    flip = torch.rand(batch, generator=generator) < flip_p
                    x = torch.where(flip.to(device).view(-1, 1, 1, 1), x.flip(3), x)
                x = ((x - pixel_mean) / pixel_std).contiguous(memory_format=memory_format)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = F.cross_entropy(classifier(x).float(), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
    return classifier.eval()


def finetune_predict(backbone: nn.Module, train_images: Tensor, train_labels: Tensor, test_images: Tensor,
                     mean: Tensor, std: Tensor, num_classes: int, **settings) -> Tensor:
    """Predicted labels of the test images after `finetune` on the training images (same settings)."""
    classifier = finetune(backbone, train_images, train_labels, mean, std, num_classes, **settings)
    return extract_features(classifier, test_images, mean, std).argmax(dim=1)
