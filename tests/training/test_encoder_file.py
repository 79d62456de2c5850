"""Encoder directories: what save_encoder writes, load_encoder rebuilds without data, bit for bit;
every damaged or missing file is one line naming it, and a state dict cannot run code."""

import hashlib
import os

import pytest
import torch
import yaml

from hpsearch.config.schema import ModelConfig
from hpsearch.training.backbones import build_backbone
from hpsearch.training.encoder_file import (CONFIG_FILE, STATE_FILE, EncoderFileError, load_encoder, read_config,
                                            save_encoder)

MODEL = ModelConfig(backbone="small_cnn", width=4)
MEAN, STD = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.25, 0.5, 0.125])


@pytest.fixture
def saved(tmp_path):
    """An encoder directory of a small CNN whose weights and BatchNorm statistics are not the initial ones."""
    torch.manual_seed(1)
    backbone, _ = build_backbone(MODEL, 3, 8)
    with torch.no_grad():
        backbone.train()(torch.randn(16, 3, 8, 8))  # moves the running statistics away from their init
        for parameter in backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    directory = save_encoder(tmp_path / "encoder", backbone, model=MODEL, in_channels=3, image_size=8, mean=MEAN,
                             std=STD, source={"study": "unit", "trial": 4})
    return directory, backbone.eval()


def test_loaded_encoder_gives_the_saved_backbones_features_in_eval_mode(saved):
    directory, backbone = saved
    rng = torch.get_rng_state()
    encoder = load_encoder(directory)
    assert torch.equal(torch.get_rng_state(), rng)  # building it drew no numbers from the caller's generator
    assert isinstance(encoder, torch.nn.Module) and not any(m.training for m in encoder.modules())
    images = torch.randn(10, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(encoder(images), backbone(images))  # eval mode: BatchNorm's running statistics
    assert encoder.feature_dim == backbone.feature_dim == 32


def test_config_is_readable_yaml_with_exact_normalisation(saved):
    directory, _ = saved
    text = (directory / CONFIG_FILE).read_text()
    assert text.startswith("# A trained encoder exported by hpsearch")
    config = yaml.safe_load(text)
    assert config == read_config(directory)
    assert config["model"]["backbone"] == "small_cnn" and config["model"]["width"] == 4
    assert (config["in_channels"], config["image_size"], config["feature_dim"]) == (3, 8, 32)
    # float32 statistics survive YAML exactly, so features normalised with them match the trial's.
    assert torch.equal(torch.tensor(config["normalize"]["mean"]), MEAN)
    assert torch.equal(torch.tensor(config["normalize"]["std"]), STD)
    assert config["source"] == {"study": "unit", "trial": 4}
    # backbone.pt is a plain state dict: other code reads it with torch.load alone.
    assert set(torch.load(directory / STATE_FILE, weights_only=True)) == set(load_encoder(directory).state_dict())


def _truncate(directory):
    data = (directory / STATE_FILE).read_bytes()
    (directory / STATE_FILE).write_bytes(data[: len(data) // 2])


def _flip_byte(directory):
    data = bytearray((directory / STATE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / STATE_FILE).write_bytes(bytes(data))


def _edit_config(directory, **changes):
    config = read_config(directory)
    config.update(changes)
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("damage, named, says", [
    (_truncate, STATE_FILE, "truncated or damaged"),
    (_flip_byte, STATE_FILE, "truncated or damaged"),
    (lambda d: (d / STATE_FILE).unlink(), STATE_FILE, "No such file"),
    (lambda d: (d / CONFIG_FILE).unlink(), CONFIG_FILE, "not an exported encoder"),
    (lambda d: (d / CONFIG_FILE).write_text("format: [unclosed"), CONFIG_FILE, "unreadable"),
    (lambda d: (d / CONFIG_FILE).write_text("just: text"), CONFIG_FILE, "not an hpsearch encoder file"),
    (lambda d: _edit_config(d, model={"backbone": "small_cnn", "width": 8}), STATE_FILE, "does not fit a small_cnn"),
    (lambda d: _edit_config(d, model={"backbone": "resnet7"}), CONFIG_FILE, "cannot build the backbone"),
])
def test_a_damaged_or_missing_file_is_one_line_naming_it(saved, damage, named, says):
    directory, _ = saved
    damage(directory)
    with pytest.raises(EncoderFileError) as caught:
        load_encoder(directory)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert str(directory / named) in message and says in message


class _RunsCode:
    """A pickle that runs a function when loaded: what weights_only=True refuses."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_state_dict_file_cannot_run_code(saved, tmp_path):
    directory, _ = saved
    marker = tmp_path / "ran"
    torch.save(_RunsCode(marker), directory / STATE_FILE)
    # A checksum that matches, so that only weights_only stands between the file and the code.
    _edit_config(directory, sha256=hashlib.sha256((directory / STATE_FILE).read_bytes()).hexdigest())
    with pytest.raises(EncoderFileError, match="not a readable state dict"):
        load_encoder(directory)
    assert not marker.exists()


def test_an_unwritable_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    backbone, _ = build_backbone(MODEL, 3, 8)
    with pytest.raises(EncoderFileError, match="cannot write the encoder"):
        save_encoder(tmp_path / "file" / "encoder", backbone, model=MODEL, in_channels=3, image_size=8, mean=MEAN,
                     std=STD, source={})
