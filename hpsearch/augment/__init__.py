"""Per-sample batched SSL augmentation on the images' device: every image of a batch draws its own
crop, flip, colour jitter, grayscale, blur and solarisation (`random_views`). Knows nothing of
studies, Optuna or MLflow; the method library (`objectives/`) builds its views with it."""

from hpsearch.augment.ops import apply, blur_kernel_size, normalise, random_views
from hpsearch.augment.params import AugmentParams, sample_params

__all__ = ["AugmentParams", "apply", "blur_kernel_size", "normalise", "random_views", "sample_params"]
