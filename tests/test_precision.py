"""Precision switches at run time: INT8 on the CPU reference path, and back, with no disk read."""

import numpy as np
import pytest
import torch

from app.cli import main
from engine.generator import Generator
from engine.model import load_model
from engine.request import GenerationRequest
from quant import QuantLinear
from tests.numerics import psnr


def pixels(images):
    return np.asarray(images[0]).astype(np.float64)


def test_int8_switches_on_and_off_without_reading_the_checkpoint(tiny_model_dir, monkeypatch):
    model = load_model(tiny_model_dir, device="cpu")
    generator = Generator(model, previews=False)
    request = GenerationRequest("a red circle", width=64, height=96, steps=4, seed=3, precision="fp32")
    float_image = pixels(generator.generate(request))

    import engine.model as model_module

    def no_disk(*args, **kwargs):
        raise AssertionError("the checkpoint was read again")

    monkeypatch.setattr(model_module, "_load_dit", no_disk)
    int8_image = pixels(generator.generate(request.replace(precision="int8")))
    int8_layers = [m for m in model.dit.modules() if isinstance(m, QuantLinear)]
    assert int8_layers and all(layer.int8 for layer in int8_layers)
    assert not np.array_equal(int8_image, float_image), "INT8 ran, so the pixels move a little"
    assert psnr(int8_image, float_image) >= 25.0  # W8A8 on random weights: small but visible error

    again = pixels(generator.generate(request))
    assert not any(layer.int8 for layer in int8_layers)
    assert np.array_equal(again, float_image), "back to fp32 must be bit-identical"
    assert not any(isinstance(m, QuantLinear) for m in model.dit.modules()), "the int8 copies are dropped"
    # INT8 again is made again from the same float weights: the same picture, still no disk read
    assert np.array_equal(pixels(generator.generate(request.replace(precision="int8"))), int8_image)


def test_cli_precision_int8_runs_on_the_cpu(tiny_model_dir, tmp_path):
    output = tmp_path / "int8.png"
    code = main(["generate", "--model", str(tiny_model_dir), "--prompt", "a cat", "--width", "64",
                 "--height", "64", "--steps", "2", "--seed", "1", "--device", "cpu",
                 "--precision", "int8", "--output", str(output)])
    assert code == 0
    from PIL import Image

    with Image.open(output) as image:
        assert "Precision: int8" in image.info["parameters"]


def test_casting_between_checkpoint_dtype_and_fp32_is_exact(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu", precision="fp32")
    original = {k: v.clone() for k, v in model.dit.state_dict().items()}
    model.set_precision("bf16")
    assert model.dit_dtype == torch.bfloat16
    model.set_precision("fp32")  # bf16 → fp32 would lose bits: the loader re-reads instead
    assert all(torch.equal(original[k], v) for k, v in model.dit.state_dict().items())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precisions_run_on_the_cpu(tiny_model_dir, precision):
    model = load_model(tiny_model_dir, device="cpu", precision=precision)
    images = Generator(model, previews=False).generate(
        GenerationRequest("a cat", width=64, height=64, steps=2, seed=0, precision=precision))
    assert images[0].size == (64, 64)
