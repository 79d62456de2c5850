"""Datasets by the name study files use (`data.dataset`) and the three splits a study needs.

A study sees its data as three splits: an unlabelled pretraining set (labels never used), a small
labelled probe set (for the kNN proxy and for training the final linear probe) and a held-out
evaluation set (only the final metric is measured on it). Images stay uint8 until augmentation.

Sources (`DATASETS`, keyed by the lower-case name a study file writes):
- `digits`: scikit-learn's scans; no test split, so eval is held out of the one pool.
- torchvision datasets (`cifar10`, `cifar100`, `stl10`, `svhn`, `mnist`, `fashion_mnist`), read
  from `data.root` and downloaded there only when `data.download` is true.
- `imagefolder`: `root/train/<class>/*`, `root/test/<class>/*` and optionally `root/unlabeled/**`.
A source with a test split gives eval from test, probe from train, pretraining from train plus its
unlabelled split. Its splits are decoded once per image size and cached on disk as uint8 tensors;
an image-file source too large for memory (`data.stream`) streams its pretraining images instead
(`StreamedImages`), and `pretrain_batches` fetches training batches from either.
"""

from hpsearch.data.sources import DATASETS, Source
from hpsearch.data.splits import Splits, load_splits, make_splits, pretrain_batches, stratified_pick
from hpsearch.data.streaming import StreamedImages

__all__ = ["DATASETS", "Source", "Splits", "StreamedImages", "load_splits", "make_splits", "pretrain_batches",
           "stratified_pick"]
