"""DC-AE: parity with diffusers' AutoencoderDC, the published config, the original checkpoint names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.dcae import DCAE, DCAEConfig
from engine.errors import CheckpointError, ConfigError
from engine.original_dcae import convert_original_dcae, looks_like_original_dcae
from tests.numerics import rel_err

PUBLISHED = Path(__file__).parents[1] / "engine" / "published_configs" / "vae_dc-ae-f32c32-sana-1.0.json"

# Six stages (5 downsamples = 32×), ResBlocks then EfficientViT blocks, as in SANA's f32c32 but
# narrow. latent 16 < last width 32 so the encoder/decoder shortcuts really average and repeat.
TINY = {
    "in_channels": 3,
    "latent_channels": 16,
    "attention_head_dim": 8,
    "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "encoder_block_out_channels": [8, 16, 16, 32, 32, 32],
    "decoder_block_out_channels": [8, 16, 16, 32, 32, 32],
    "encoder_layers_per_block": [1, 2, 1, 2, 1, 1],
    "decoder_layers_per_block": [2, 1, 1, 1, 2, 1],
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "downsample_block_type": "Conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}
HEIGHT, WIDTH = 64, 96  # non-square; the deepest stage sees 2×3 positions


@pytest.fixture(scope="module")
def saved_reference(tmp_path_factory):
    """A random diffusers AutoencoderDC saved with save_pretrained; norms randomized too."""
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    reference = AutoencoderDC(**TINY).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "norm" in name:  # ones/zeros at init would hide a misplaced affine
                param.copy_(torch.randn_like(param) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    folder = tmp_path_factory.mktemp("dcae")
    reference.save_pretrained(folder)
    return reference, folder


def load_ours(folder: Path) -> DCAE:
    config = DCAEConfig.from_dict(json.loads((folder / "config.json").read_text()))
    model = DCAE(config).eval()
    model.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)
    return model


def test_decode_and_encode_match_diffusers_within_1e_5(saved_reference):
    reference, folder = saved_reference
    ours = load_ours(folder)
    torch.manual_seed(1)
    images = torch.rand(2, 3, HEIGHT, WIDTH) * 2 - 1
    latents = torch.randn(2, TINY["latent_channels"], HEIGHT // 32, WIDTH // 32)
    with torch.no_grad():
        decoded, decoded_ref = ours.decode(latents), reference.decode(latents).sample
        encoded, encoded_ref = ours.encode(images), reference.encode(images).latent
    assert decoded.shape == (2, 3, HEIGHT, WIDTH)
    assert encoded.shape == (2, TINY["latent_channels"], HEIGHT // 32, WIDTH // 32)
    decode_err, encode_err = rel_err(decoded, decoded_ref), rel_err(encoded, encoded_ref)
    print(f"DC-AE vs diffusers, rel. error: decode {decode_err:.2e}, encode {encode_err:.2e}")
    assert decode_err < 1e-5
    assert encode_err < 1e-5


def test_bf16_decode_stays_close_to_fp32_and_returns_bf16(saved_reference):
    _, folder = saved_reference
    ours = load_ours(folder)
    torch.manual_seed(2)
    latents = torch.randn(1, TINY["latent_channels"], HEIGHT // 32, WIDTH // 32)
    with torch.no_grad():
        full = ours.decode(latents)
        half = ours.to(torch.bfloat16).decode(latents.bfloat16())
    assert half.dtype == torch.bfloat16
    assert rel_err(half.float(), full) < 5e-2


def test_model_has_no_buffers_outside_the_state_dict(saved_reference):
    _, folder = saved_reference
    ours = load_ours(folder)
    assert list(ours.buffers()) == []
    assert set(ours.state_dict()) == {name for name, _ in ours.named_parameters()}


def test_published_config_gives_diffusers_parameter_names_and_shapes_on_meta():
    from diffusers import AutoencoderDC

    data = json.loads(PUBLISHED.read_text())
    config = DCAEConfig.from_dict(data)
    assert (config.latent_channels, config.spatial_compression, config.scaling_factor) == (32, 32, 0.41407)
    with torch.device("meta"):
        ours = DCAE(config)
        reference = AutoencoderDC.from_config(data)
    shapes = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    assert shapes == {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 312_250_275  # "312M" in the paper


# --- the original mit-han-lab checkpoint -------------------------------------------------------

# efficientvit's module paths for our (diffusers') ones, written from efficientvit's dc_ae.py and
# nn/ops.py, independently of engine/original_dcae.py, and checked against diffusers' converter.
STEM_ORIGINAL = {
    "encoder.conv_in": "encoder.project_in.conv",
    "encoder.conv_out": "encoder.project_out.main.op_list.0.conv",
    "decoder.conv_in": "decoder.project_in.main.conv",
    "decoder.norm_out": "decoder.project_out.op_list.0",
    "decoder.conv_out": "decoder.project_out.op_list.2.conv",
}
OP_ORIGINAL = {
    "conv1": "main.conv1.conv",
    "conv2": "main.conv2.conv",
    "norm": "main.conv2.norm",
    "attn.to_out": "context_module.main.proj.conv",
    "attn.norm_out": "context_module.main.proj.norm",
    "attn.to_qkv_multiscale.0.proj_in": "context_module.main.aggreg.0.0",
    "attn.to_qkv_multiscale.0.proj_out": "context_module.main.aggreg.0.1",
    "conv_out.conv_inverted": "local_module.main.inverted_conv.conv",
    "conv_out.conv_depth": "local_module.main.depth_conv.conv",
    "conv_out.conv_point": "local_module.main.point_conv.conv",
    "conv_out.norm": "local_module.main.point_conv.norm",
    "encoder.conv": "main.conv",  # the stride-2 ConvLayer
    "decoder.conv": "main.conv.conv",  # InterpolateConvUpSampleLayer.conv
}


def efficientvit_state_dict(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    original = {}
    for name, tensor in diffusers_state.items():
        module, _, leaf = name.rpartition(".")
        if module in STEM_ORIGINAL:
            original[f"{STEM_ORIGINAL[module]}.{leaf}"] = tensor
            continue
        side, blocks, stage, op, inner = module.split(".", 4)
        prefix = f"{side}.stages.{stage}.op_list.{op}"
        if inner in ("attn.to_q", "attn.to_k"):
            continue
        if inner == "attn.to_v":  # one fused 1×1 conv in the original
            thirds = [diffusers_state[f"{side}.{blocks}.{stage}.{op}.attn.to_{p}.weight"] for p in "qkv"]
            qkv = torch.cat(thirds)
            original[f"{prefix}.context_module.main.qkv.conv.weight"] = qkv[:, :, None, None]
            continue
        if inner == "attn.to_out":
            tensor = tensor[:, :, None, None]
        path = OP_ORIGINAL[f"{side}.conv" if inner == "conv" else inner]
        original[f"{prefix}.{path}.{leaf}"] = tensor
    return original


def test_original_checkpoint_converts_to_the_exact_diffusers_state_dict(saved_reference):
    from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers

    reference, folder = saved_reference
    expected = reference.state_dict()
    original = efficientvit_state_dict(expected)
    assert looks_like_original_dcae(original) and not looks_like_original_dcae(expected)
    # The hand-built original names are the ones diffusers' own converter understands.
    by_diffusers = convert_autoencoder_dc_checkpoint_to_diffusers(dict(original))
    assert by_diffusers.keys() == expected.keys()

    config = DCAEConfig.from_dict(json.loads((folder / "config.json").read_text()))
    converted = convert_original_dcae(original, config)
    assert converted.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(converted[name], tensor), name
    ours = DCAE(config)
    ours.load_state_dict(converted, strict=True, assign=True)


def test_original_names_at_published_size_produce_every_diffusers_parameter():
    from diffusers import AutoencoderDC

    data = json.loads(PUBLISHED.read_text())
    with torch.device("meta"):
        reference = AutoencoderDC.from_config(data)
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    original = efficientvit_state_dict(reference.state_dict())
    converted = convert_original_dcae(original, DCAEConfig.from_dict(data))
    assert {name: tuple(t.shape) for name, t in converted.items()} == expected


def test_original_checkpoint_with_unknown_or_missing_tensors_is_refused_by_name(saved_reference):
    reference, folder = saved_reference
    config = DCAEConfig.from_dict(json.loads((folder / "config.json").read_text()))
    original = efficientvit_state_dict(reference.state_dict())

    extra = {**original, "encoder.quant_conv.weight": torch.zeros(8)}
    with pytest.raises(CheckpointError, match=r"unknown names: encoder\.quant_conv\.weight"):
        convert_original_dcae(extra, config)

    beyond = {**original, "encoder.stages.0.op_list.7.main.conv1.conv.bias": torch.zeros(8)}
    with pytest.raises(CheckpointError, match=r"no place for: encoder\.stages\.0\.op_list\.7\.main\.conv1"):
        convert_original_dcae(beyond, config)

    lacking = dict(original)
    del lacking["decoder.project_out.op_list.0.bias"]
    with pytest.raises(CheckpointError, match=r"missing \(diffusers names\): decoder\.norm_out\.bias"):
        convert_original_dcae(lacking, config)


# --- config -------------------------------------------------------------------------------------


def test_config_ignores_underscore_keys_and_fills_diffusers_defaults():
    config = DCAEConfig.from_dict({"_class_name": "AutoencoderDC", "_diffusers_version": "0.32.0", **TINY})
    assert config.decoder_norm_types == ("rms_norm",) * 6
    assert config.encoder_out_shortcut and config.decoder_in_shortcut
    assert config.decoder_conv_act_fn == "relu"


def test_config_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown keys.*'use_tiling_please'"):
        DCAEConfig.from_dict({**TINY, "use_tiling_please": True})


def test_config_unsupported_block_type_names_the_allowed_ones():
    allowed = "'ResBlock' or 'EfficientViTBlock'"
    with pytest.raises(ConfigError, match=f"encoder_block_types = 'AttnBlock'.*{allowed}"):
        DCAEConfig.from_dict({**TINY, "encoder_block_types": ["AttnBlock"] + TINY["encoder_block_types"][1:]})


def test_config_unsupported_switches_are_refused():
    with pytest.raises(ConfigError, match="downsample_block_type = 'pixel_unshuffle'.*'Conv'"):
        DCAEConfig.from_dict({**TINY, "downsample_block_type": "pixel_unshuffle"})
    with pytest.raises(ConfigError, match="decoder_norm_types = 'batch_norm'.*'rms_norm'"):
        DCAEConfig.from_dict({**TINY, "decoder_norm_types": ["batch_norm"] * 3 + ["rms_norm"] * 3})
    with pytest.raises(ConfigError, match="encoder_layers_per_block = 0"):
        DCAEConfig.from_dict({**TINY, "encoder_layers_per_block": [0, 2, 1, 2, 1, 1]})
    with pytest.raises(ConfigError, match="one value for each of the 6 stages"):
        DCAEConfig.from_dict({**TINY, "decoder_layers_per_block": [1, 1]})
