"""The names a study file may give to engine pieces registered on higher floors: backbones
(`hpsearch.training.backbones.BACKBONES`) and pruners (`hpsearch.pruning.pruners`).

The schema validates names against these tuples so that reading a study file never imports the
builders; each registry is keyed by exactly these names (tests/test_layout.py checks they agree).
"""

BACKBONES = ("small_cnn", "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small")

PRUNERS = ("calibrated", "hyperband", "median", "none", "patient", "percentile", "successive_halving",
           "threshold", "wilcoxon")
