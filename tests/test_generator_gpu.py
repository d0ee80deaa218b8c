"""On a CUDA GPU: the whole Generator (fused DiT, CUDA-graph runner, tiled decode) against the CPU."""

import pytest

from engine.generator import Generator
from engine.model import load_model
from engine.request import GenerationRequest
from tests.numerics import psnr


@pytest.mark.gpu
@pytest.mark.parametrize("precision, floor", [("fp32", 40.0), ("fp16", 30.0), ("bf16", 25.0), ("int8", 25.0)])
def test_cuda_generation_matches_the_cpu(tiny_model_dir, precision, floor):
    request = GenerationRequest("a red circle on the left", width=96, height=64, steps=6, seed=5, precision="fp32")
    cpu = Generator(load_model(tiny_model_dir, device="cpu"), previews=False).generate(request)[0]
    gpu_generator = Generator(load_model(tiny_model_dir, device="cuda"), previews=True)
    steps = []
    cuda = gpu_generator.generate(request.replace(precision=precision), on_event=steps.append)[0]
    replayed = []
    again = gpu_generator.generate(request.replace(precision=precision), on_event=replayed.append)[0]
    value = psnr(cuda, cpu)
    print(f"{precision}: PSNR CUDA vs CPU fp32 {value:.1f} dB")
    assert value >= floor
    assert list(again.getdata()) == list(cuda.getdata())
    assert sum(1 for event in steps if type(event).__name__ == "Step" and event.preview is not None) == 6
    # the first run captured a graph and said so before its first step; the second replays it
    assert [type(e).__name__ for e in steps[:3]] == ["Started", "Preparing", "Step"]
    assert "Preparing" not in [type(e).__name__ for e in replayed]


@pytest.mark.gpu
def test_an_offloaded_text_encoder_waits_in_cpu_memory_and_changes_nothing(tiny_model_dir):
    import torch

    request = GenerationRequest("a red circle on the left", width=64, height=64, steps=4, seed=5, precision="fp16")
    plain = Generator(load_model(tiny_model_dir, device="cuda"), previews=False).generate(request)[0]
    generator = Generator(load_model(tiny_model_dir, device="cuda"), previews=False, offload_text_encoder=True)
    encoder = generator.model.text_encoder
    offloaded = generator.generate(request)[0]
    weight = next(encoder.model.parameters())
    assert weight.device.type == "cpu" and weight.is_pinned() and encoder.parked
    assert list(offloaded.getdata()) == list(plain.getdata())
    host_copy = dict(encoder._host_copy)
    again = generator.generate(request.replace(prompt="a blue square at the top"))[0]  # brought back to encode
    assert next(encoder.model.parameters()).device.type == "cpu"
    assert all(encoder._host_copy[name] is tensor for name, tensor in host_copy.items())  # copied once
    assert again.size == (64, 64) and encoder.device == torch.device("cuda", 0)


@pytest.mark.gpu
def test_an_8bit_text_encoder_loads_through_bitsandbytes_and_draws_the_same_picture(tiny_model_dir):
    """Issue #5: Gemma-2 in 8 bits on CUDA through bitsandbytes (a dependency of the app; carried to
    the GPU machine for this test); the image stays close to the 16-bit one."""
    request = GenerationRequest("a red circle on the left", width=64, height=64, steps=4, seed=5, precision="fp16")
    plain = Generator(load_model(tiny_model_dir, device="cuda"), previews=False).generate(request)[0]
    model = load_model(tiny_model_dir, device="cuda", text_encoder_8bit=True)
    assert model.notes == () and model.text_encoder.model.is_loaded_in_8bit
    model.text_encoder.park()  # 8-bit weights cannot move: parking leaves them, and says nothing
    assert not model.text_encoder.parked
    image = Generator(model, previews=False, offload_text_encoder=True).generate(request)[0]
    value = psnr(image, plain)
    print(f"8-bit text encoder vs 16-bit: PSNR {value:.1f} dB")
    assert value >= 25.0


def gpu_resident_bytes(module) -> int:
    """Bytes of the distinct CUDA storages the module holds: parameters, buffers, and the fused
    twins' stacked weights (`engine.accelerate.stack_rows`)."""
    import itertools

    tensors = itertools.chain(module.parameters(), module.buffers(),
                              *(getattr(m, "_stacks", {}).values() for m in module.modules()))
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.is_cuda}
    return sum(storages.values())


@pytest.mark.gpu
def test_int8_holds_its_own_weights_on_the_gpu_and_switching_back_is_exact(tiny_model_dir):
    """INT8 parks the quantized layers' 16-bit weights in host memory (the GPU holds their int8
    copies instead), FP16 drops the int8 copies again: each precision holds only its own weights,
    and FP16 after INT8 draws the same bits as before it."""
    from quant import QuantLinear, QuantPointwiseConv

    model = load_model(tiny_model_dir, device="cuda")
    generator = Generator(model, previews=False)
    request = GenerationRequest("a red circle on the left", width=64, height=64, steps=4, seed=5, precision="fp16")
    fp16_image = generator.generate(request)[0]
    fp16_bytes = gpu_resident_bytes(model.dit)
    int8_image = generator.generate(request.replace(precision="int8"))[0]
    layers = [m for m in model.dit.modules() if isinstance(m, (QuantLinear, QuantPointwiseConv))]
    assert layers and all(layer.parked and layer._parked.device.type == "cpu" for layer in layers)
    float_bytes = sum(layer._parked.numel() * layer._parked.element_size() for layer in layers)
    int8_bytes = sum(layer.weight_int8.numel() + 4 * layer.weight_scale.numel() for layer in layers)
    assert gpu_resident_bytes(model.dit) == fp16_bytes - float_bytes + int8_bytes
    assert psnr(int8_image, fp16_image) >= 25.0
    back = generator.generate(request)[0]
    assert not any(isinstance(m, (QuantLinear, QuantPointwiseConv)) for m in model.dit.modules())
    assert gpu_resident_bytes(model.dit) == fp16_bytes
    assert list(back.getdata()) == list(fp16_image.getdata())
