"""An exported encoder: a directory a trained backbone is rebuilt from without the data, Optuna or
MLflow (`hpsearch export NAME --out DIR` writes one, `hpsearch.load_encoder(DIR)` reads it).

Files:
- `encoder.yaml`, for humans and for building: the `model` section, input channels and image size
  (what hpsearch.training.backbones needs), the normalisation the trial's features were measured
  with, the SHA-256 of the state dict, and where the encoder comes from (study, trial, value, params).
- `backbone.pt`: the backbone's state dict as plain `torch.save` output, so that other code can read
  it too; loaded here with `weights_only=True`, so the file cannot run code.

Every problem reading a directory is one EncoderFileError line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from hpsearch.config.schema import ModelConfig
from hpsearch.training.backbones import build_backbone

FORMAT = "hpsearch-encoder/1"
CONFIG_FILE = "encoder.yaml"
STATE_FILE = "backbone.pt"
HEADER = ("# A trained encoder exported by hpsearch. Load it with hpsearch.load_encoder(this folder);\n"
          "# its inputs: float pixels in [0, 1] at image_size, minus normalize.mean, divided by normalize.std.\n")


class EncoderFileError(Exception):
    """An encoder directory that cannot be written or read; the message names the file."""


def save_encoder(directory: str | Path, backbone: nn.Module, *, model: ModelConfig, in_channels: int,
                 image_size: int, mean: Tensor, std: Tensor, source: dict[str, Any]) -> Path:
    """Write `backbone`'s weights and what rebuilds it into `directory` (created; existing encoder
    files replaced). `mean`/`std`: the per-channel pixel statistics its inputs are normalised with."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, buffer)
        payload = buffer.getvalue()
        config = {
            "format": FORMAT,
            "model": model.model_dump(mode="json"),
            "in_channels": in_channels,
            "image_size": image_size,
            "feature_dim": backbone.feature_dim,
            "normalize": {"mean": mean.tolist(), "std": std.tolist()},  # float32 values, exact as YAML floats
            "state_dict": STATE_FILE,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "source": source,
        }
        # The state dict first, the config (which holds its checksum) last: a directory whose write was
        # cut short fails the checksum instead of loading stale weights.
        _write_atomically(directory / STATE_FILE, payload)
        _write_atomically(directory / CONFIG_FILE, (HEADER + yaml.safe_dump(config, sort_keys=False)).encode())
    except OSError as err:
        raise EncoderFileError(f"{directory}: cannot write the encoder ({err.strerror or err})") from None
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed `encoder.yaml` of an encoder directory."""
    path = Path(directory) / CONFIG_FILE
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise EncoderFileError(f"{path}: no such file; not an exported encoder "
                               "(write one with `hpsearch export NAME --out DIR`)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise EncoderFileError(f"{path}: unreadable ({_first_line(err)})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise EncoderFileError(f"{path}: not an hpsearch encoder file (expected format {FORMAT!r})")
    return config


def load_encoder(directory: str | Path) -> nn.Module:
    """The exported backbone, on the CPU and in eval mode: maps normalised `[N, C, H, W]` images to
    `[N, feature_dim]` features, exactly the trial's on the CPU. See `encoder.yaml` for its inputs."""
    config = read_config(directory)
    state = _read_state(Path(directory) / STATE_FILE, config.get("sha256"))
    where = Path(directory) / CONFIG_FILE
    try:
        model = ModelConfig.model_validate(config["model"])
        # Building draws random initial weights, soon overwritten: the caller's RNG stays as it was.
        with torch.random.fork_rng(devices=[]):
            backbone, _ = build_backbone(model, int(config["in_channels"]), int(config["image_size"]))
    except (KeyError, TypeError, ValueError) as err:
        raise EncoderFileError(f"{where}: cannot build the backbone ({_first_line(err)})") from None
    try:
        backbone.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or misshapen weights
        raise EncoderFileError(f"{Path(directory) / STATE_FILE}: does not fit a {model.backbone} "
                               f"built from {CONFIG_FILE} ({_first_line(err)})") from None
    return backbone.eval()


def _read_state(path: Path, sha256: str | None) -> dict[str, Tensor]:
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise EncoderFileError(f"{path}: {err.strerror or err}") from None
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise EncoderFileError(f"{path}: checksum mismatch with {CONFIG_FILE} (truncated or damaged)")
    try:
        # weights_only: tensors and plain containers, never code to run.
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle's and torch's many errors for a file that is not a state dict
        raise EncoderFileError(f"{path}: not a readable state dict ({_first_line(err)})") from None
    if not isinstance(state, dict):
        raise EncoderFileError(f"{path}: not a state dict (holds a {type(state).__name__})")
    return state


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
