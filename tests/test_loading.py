"""Every way a model folder can be wrong gives one CheckpointError/ConfigError naming the problem."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError, ConfigError
from engine.model import load_model


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_tiny_model_loads_with_every_component(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    assert model.name == "tiny-sana"
    assert model.dit_dtype == torch.float32 and model.device.type == "cpu"
    assert model.dcae.config.scaling_factor == pytest.approx(0.41407)
    assert model.native_size == 4 * 32


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere", device="cpu")


def test_folder_without_model_index_is_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="model_index.json is missing"):
        load_model(tmp_path, device="cpu")


def test_missing_component_is_named(model_copy):
    shutil.rmtree(model_copy / "vae")
    with pytest.raises(CheckpointError, match=r"component folder missing: vae/"):
        load_model(model_copy, device="cpu")


def test_missing_weights_file_is_named(model_copy):
    (model_copy / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"transformer: no weights found"):
        load_model(model_copy, device="cpu")


def test_truncated_safetensors_is_reported_with_its_file(model_copy):
    weights = model_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors: truncated or corrupt"):
        load_model(model_copy, device="cpu")


def test_garbage_safetensors_header_is_reported(model_copy):
    weights = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match=r"vae.*truncated or corrupt"):
        load_model(model_copy, device="cpu")


def test_tensor_of_wrong_shape_names_tensor_shapes_and_file(model_copy):
    weights = model_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["proj_out.weight"] = torch.zeros(31, state["proj_out.weight"].shape[1])
    del state["scale_shift_table"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, weights)
    with pytest.raises(CheckpointError) as caught:
        load_model(model_copy, device="cpu")
    message = str(caught.value)
    assert "transformer weights do not match" in message
    assert "proj_out.weight has shape [31, 64]" in message and "needs [32, 64]" in message
    assert "missing 1: scale_shift_table" in message and "unexpected 1: extra.weight" in message
    assert "diffusion_pytorch_model.safetensors" in message


def test_text_encoder_weights_are_checked_before_transformers_loads_them(model_copy):
    weights = model_copy / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    del state["norm.weight"]
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=r"text_encoder weights do not match.*missing 1: norm.weight"):
        load_model(model_copy, device="cpu")


def test_unknown_pipeline_class_is_an_unknown_model(model_copy):
    index = json.loads((model_copy / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"unknown model 'FluxPipeline'; supported: SanaPipeline"):
        load_model(model_copy, device="cpu")


def test_unknown_transformer_config_key_is_named(model_copy):
    path = model_copy / "transformer" / "config.json"
    config = json.loads(path.read_text())
    config["num_experts"] = 8
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="num_experts"):
        load_model(model_copy, device="cpu")


def test_sharded_and_variant_files_are_found(model_copy):
    folder = model_copy / "transformer"
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(state)
    halves = {"a": names[: len(names) // 2], "b": names[len(names) // 2:]}
    weight_map = {}
    for tag, part in halves.items():
        file = f"diffusion_pytorch_model.fp16-0000{'1' if tag == 'a' else '2'}-of-00002.safetensors"
        save_file({n: state[n].half() for n in part}, folder / file)
        weight_map.update({n: file for n in part})
    (folder / "diffusion_pytorch_model.safetensors.index.fp16.json").write_text(json.dumps({"weight_map": weight_map}))
    model = load_model(model_copy, device="cpu", precision="auto")
    assert model.checkpoint_dtype == torch.float16
    loaded = model.dit.state_dict()
    assert all(torch.equal(loaded[n], state[n].half().float()) for n in names)


def test_cuda_on_a_machine_without_it_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from engine.errors import DeviceError

    with pytest.raises(DeviceError, match="no usable CUDA GPU"):
        load_model(tiny_model_dir, device="cuda")


def test_original_nvlabs_and_efficientvit_weights_load_and_give_the_same_image(model_copy, tiny_model_dir):
    from engine.generator import Generator
    from engine.request import GenerationRequest
    from tests.test_dcae import efficientvit_state_dict
    from tests.test_dit import original_from_diffusers

    transformer = model_copy / "transformer"
    state = load_file(transformer / "diffusion_pytorch_model.safetensors")
    (transformer / "diffusion_pytorch_model.safetensors").unlink()
    layers = json.loads((transformer / "config.json").read_text())["num_layers"]
    torch.save({"state_dict": original_from_diffusers(state, layers, qk_norm=False)}, transformer / "Sana_tiny.pth")

    vae = model_copy / "vae"
    state = load_file(vae / "diffusion_pytorch_model.safetensors")
    (vae / "diffusion_pytorch_model.safetensors").unlink()
    save_file(efficientvit_state_dict(state), vae / "model.safetensors")

    request = GenerationRequest("a red circle", width=64, height=64, steps=3, seed=11)
    original = Generator(load_model(model_copy, device="cpu"), previews=False).generate(request)[0]
    published = Generator(load_model(tiny_model_dir, device="cpu"), previews=False).generate(request)[0]
    assert list(original.getdata()) == list(published.getdata())
