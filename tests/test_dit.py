"""LinearDiT against diffusers' SanaTransformer2DModel: same names, same shapes, same numbers.

Tiny random models, fp32 on the CPU. Relative error is norm(ours − ref) / norm(ref).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch

from engine.dit import DiTConfig, LinearDiT
from engine.errors import CheckpointError, ConfigError
from engine.original_dit import convert_original_dit, looks_like_original_dit

diffusers = pytest.importorskip("diffusers")
from diffusers import SanaTransformer2DModel  # noqa: E402

from tests.numerics import rel_err

PARITY_TOLERANCE = 1e-5
PUBLISHED = Path(__file__).resolve().parents[1] / "engine" / "published_configs"
PUBLISHED_FILES = sorted(PUBLISHED.glob("transformer_*.json"))

TINY = dict(
    in_channels=32, out_channels=32, num_layers=2,
    num_attention_heads=2, attention_head_dim=32,  # width 64
    num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
    caption_channels=48, sample_size=8,
)


def tiny_reference(tmp_path: Path, **overrides) -> tuple[SanaTransformer2DModel, DiTConfig]:
    """A random diffusers model, saved and read back through its config.json."""
    torch.manual_seed(0)
    reference = SanaTransformer2DModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # norm weights start at one: move them so a missed weight shows
        for name, parameter in reference.named_parameters():
            if "norm" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
    reference.save_pretrained(tmp_path)
    config = DiTConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    return reference, config


def inputs(h: int, w: int, caption_channels: int = 48):
    torch.manual_seed(1)
    latents = torch.randn(2, 32, h, w)
    timestep = torch.tensor([999.0, 250.5])
    text = torch.randn(2, 7, caption_channels)
    text_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])
    return latents, timestep, text, text_mask


def compare_with_diffusers(reference: SanaTransformer2DModel, config: DiTConfig, h: int, w: int) -> float:
    ours = LinearDiT(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    latents, timestep, text, text_mask = inputs(h, w)
    with torch.no_grad():
        expected = reference(latents, text, timestep, encoder_attention_mask=text_mask).sample
        got = ours(latents, timestep, text, text_mask)
    assert got.shape == expected.shape == (2, 32, h, w)
    return rel_err(got, expected)


# 1. numerical parity -------------------------------------------------------------------------


def test_dit_matches_diffusers_without_positional_embedding(tmp_path):
    reference, config = tiny_reference(tmp_path)
    assert config.interpolation_scale is None
    error = compare_with_diffusers(reference, config, 8, 8)
    print(f"NoPE relative error {error:.2e}")
    assert error < PARITY_TOLERANCE


@pytest.mark.parametrize("h, w", [(8, 8), (6, 10), (12, 4)])
def test_dit_matches_diffusers_with_positional_embedding(tmp_path, h, w):
    reference, config = tiny_reference(tmp_path, interpolation_scale=2.0)
    assert config.interpolation_scale == 2.0
    error = compare_with_diffusers(reference, config, h, w)
    print(f"sin-cos PE {h}x{w} relative error {error:.2e}")
    assert error < PARITY_TOLERANCE


def test_dit_matches_diffusers_with_rms_qk_norm(tmp_path):
    reference, config = tiny_reference(tmp_path, qk_norm="rms_norm_across_heads")
    assert config.qk_norm == "rms_norm_across_heads"
    error = compare_with_diffusers(reference, config, 6, 10)
    print(f"qk-norm relative error {error:.2e}")
    assert error < PARITY_TOLERANCE


def test_text_mask_hides_padding_tokens(tmp_path):
    """What sits under mask 0 must not change the output; what sits under 1 must."""
    _, config = tiny_reference(tmp_path)
    torch.manual_seed(0)
    model = LinearDiT(config).eval()
    latents, timestep, text, text_mask = inputs(4, 4)
    changed_padding, changed_kept = text.clone(), text.clone()
    changed_padding[1, 3:] += 10.0
    changed_kept[1, :3] += 10.0
    with torch.no_grad():
        base = model(latents, timestep, text, text_mask)
        assert rel_err(model(latents, timestep, changed_padding, text_mask), base) < 1e-6
        assert rel_err(model(latents, timestep, changed_kept, text_mask), base) > 1e-3


def test_trimmed_padding_gives_the_same_velocity(tmp_path):
    """The Generator drops padding past the longest prompt (text_encoder.trim_padding): masked
    keys add exactly zero to the softmax, so the output is the same, to fp32 summation order."""
    from engine.text_encoder import trim_padding

    _, config = tiny_reference(tmp_path)
    torch.manual_seed(0)
    model = LinearDiT(config).eval()
    latents, timestep, _, _ = inputs(4, 4)
    text = torch.randn(2, 40, 48)
    text_mask = torch.zeros(2, 40, dtype=torch.int64)
    text_mask[0, :5], text_mask[1, :3] = 1, 1
    trimmed, trimmed_mask = trim_padding(text, text_mask, multiple=8)
    assert trimmed.shape[1] == 8
    with torch.no_grad():
        base = model(latents, timestep, text, text_mask)
        assert rel_err(model(latents, timestep, trimmed, trimmed_mask), base) < 1e-6
        # one real token too few would show
        assert rel_err(model(latents, timestep, text[:, :4], text_mask[:, :4]), base) > 1e-3


def test_output_is_in_the_latents_dtype_and_model_computes_in_its_own(tmp_path):
    reference, config = tiny_reference(tmp_path)
    model = LinearDiT(config).eval()
    model.load_state_dict(reference.state_dict())
    latents, timestep, text, text_mask = inputs(6, 6)
    with torch.no_grad():
        full = model(latents, timestep, text, text_mask)
        model.to(torch.bfloat16)
        half = model(latents, timestep, text, text_mask)
    assert half.dtype == torch.float32
    assert model(latents.bfloat16(), timestep, text, text_mask).dtype == torch.bfloat16
    error = rel_err(half, full)
    print(f"bf16 vs fp32 relative error {error:.2e}")
    assert error < 3e-2


# 2. published configurations -----------------------------------------------------------------


def published_configs() -> list[tuple[str, dict]]:
    configs = [(path.stem, json.loads(path.read_text())) for path in PUBLISHED_FILES]
    base = json.loads((PUBLISHED / "transformer_sana_600m_1024px.json").read_text())
    # no 0.6B is published at 2K/4K; the 1.6B ones' position-embedding settings applied to it
    configs.append(("0.6B at 2K", {**base, "sample_size": 64, "interpolation_scale": 1.0}))
    configs.append(("0.6B at 4K", {**base, "sample_size": 128, "interpolation_scale": 2.0}))
    return configs


def test_every_published_checkpoint_has_a_config_file():
    names = {path.stem for path in PUBLISHED_FILES}
    assert names == {
        "transformer_sana_600m_512px", "transformer_sana_600m_1024px",
        "transformer_sana_1600m_512px", "transformer_sana_1600m_1024px",
        "transformer_sana_1600m_2kpx_bf16", "transformer_sana_1600m_4kpx_bf16",
        "transformer_sana1.5_1.6b_1024px",
    }


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


@pytest.mark.parametrize("name, data", published_configs(), ids=lambda x: x if isinstance(x, str) else "")
def test_published_config_gives_diffusers_parameter_names_and_shapes(name, data):
    with torch.device("meta"):
        ours = LinearDiT(DiTConfig.from_dict(data))
        reference = SanaTransformer2DModel.from_config(data)
    expected, got = shapes_of(reference.state_dict()), shapes_of(ours.state_dict())
    assert sorted(got.keys() - expected.keys()) == []
    assert sorted(expected.keys() - got.keys()) == []
    assert got == expected
    assert not list(ours.buffers())


def test_published_sizes_are_the_papers():
    counts = {}
    for name, data in published_configs():
        with torch.device("meta"):
            model = LinearDiT(DiTConfig.from_dict(data))
        counts[name] = sum(p.numel() for p in model.parameters())
    assert 0.55e9 < counts["transformer_sana_600m_1024px"] < 0.65e9
    assert 1.55e9 < counts["transformer_sana_1600m_1024px"] < 1.7e9


# 3. original checkpoint names ----------------------------------------------------------------


def original_from_diffusers(state: dict[str, torch.Tensor], num_layers: int, qk_norm: bool) -> dict:
    """The original NVlabs/Sana names, written out by hand from convert_sana_to_diffusers.py."""
    original = {
        "x_embedder.proj.weight": state["patch_embed.proj.weight"],
        "x_embedder.proj.bias": state["patch_embed.proj.bias"],
        "t_embedder.mlp.0.weight": state["time_embed.emb.timestep_embedder.linear_1.weight"],
        "t_embedder.mlp.0.bias": state["time_embed.emb.timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": state["time_embed.emb.timestep_embedder.linear_2.weight"],
        "t_embedder.mlp.2.bias": state["time_embed.emb.timestep_embedder.linear_2.bias"],
        "t_block.1.weight": state["time_embed.linear.weight"],
        "t_block.1.bias": state["time_embed.linear.bias"],
        "y_embedder.y_proj.fc1.weight": state["caption_projection.linear_1.weight"],
        "y_embedder.y_proj.fc1.bias": state["caption_projection.linear_1.bias"],
        "y_embedder.y_proj.fc2.weight": state["caption_projection.linear_2.weight"],
        "y_embedder.y_proj.fc2.bias": state["caption_projection.linear_2.bias"],
        "attention_y_norm.weight": state["caption_norm.weight"],
        "final_layer.linear.weight": state["proj_out.weight"],
        "final_layer.linear.bias": state["proj_out.bias"],
        "final_layer.scale_shift_table": state["scale_shift_table"],
    }
    for i in range(num_layers):
        o, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        original[o + "scale_shift_table"] = state[d + "scale_shift_table"]
        original[o + "attn.qkv.weight"] = torch.cat(
            [state[d + "attn1.to_q.weight"], state[d + "attn1.to_k.weight"], state[d + "attn1.to_v.weight"]]
        )
        original[o + "attn.proj.weight"] = state[d + "attn1.to_out.0.weight"]
        original[o + "attn.proj.bias"] = state[d + "attn1.to_out.0.bias"]
        original[o + "cross_attn.q_linear.weight"] = state[d + "attn2.to_q.weight"]
        original[o + "cross_attn.q_linear.bias"] = state[d + "attn2.to_q.bias"]
        original[o + "cross_attn.kv_linear.weight"] = torch.cat(
            [state[d + "attn2.to_k.weight"], state[d + "attn2.to_v.weight"]]
        )
        original[o + "cross_attn.kv_linear.bias"] = torch.cat(
            [state[d + "attn2.to_k.bias"], state[d + "attn2.to_v.bias"]]
        )
        original[o + "cross_attn.proj.weight"] = state[d + "attn2.to_out.0.weight"]
        original[o + "cross_attn.proj.bias"] = state[d + "attn2.to_out.0.bias"]
        original[o + "mlp.inverted_conv.conv.weight"] = state[d + "ff.conv_inverted.weight"]
        original[o + "mlp.inverted_conv.conv.bias"] = state[d + "ff.conv_inverted.bias"]
        original[o + "mlp.depth_conv.conv.weight"] = state[d + "ff.conv_depth.weight"]
        original[o + "mlp.depth_conv.conv.bias"] = state[d + "ff.conv_depth.bias"]
        original[o + "mlp.point_conv.conv.weight"] = state[d + "ff.conv_point.weight"]
        if qk_norm:
            original[o + "attn.q_norm.weight"] = state[d + "attn1.norm_q.weight"]
            original[o + "attn.k_norm.weight"] = state[d + "attn1.norm_k.weight"]
            original[o + "cross_attn.q_norm.weight"] = state[d + "attn2.norm_q.weight"]
            original[o + "cross_attn.k_norm.weight"] = state[d + "attn2.norm_k.weight"]
    return original


@pytest.mark.parametrize("qk_norm", [None, "rms_norm_across_heads"])
def test_original_checkpoint_converts_to_the_diffusers_state_dict(tmp_path, qk_norm):
    reference, config = tiny_reference(tmp_path, qk_norm=qk_norm)
    expected = reference.state_dict()
    original = original_from_diffusers(expected, config.num_layers, qk_norm is not None)
    original["y_embedder.y_embedding"] = torch.randn(7, 48)  # training-only tensors are dropped
    original["pos_embed"] = torch.randn(1, 64, 64)
    assert looks_like_original_dit(original.keys())
    assert not looks_like_original_dit(expected.keys())

    converted = convert_original_dit(original, config)
    assert converted.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(converted[name], tensor), name
    LinearDiT(config).load_state_dict(converted, strict=True)


@pytest.mark.parametrize("stem", ["transformer_sana_1600m_1024px", "transformer_sana1.5_1.6b_1024px"])
def test_original_names_cover_every_diffusers_name_at_published_size(stem):
    data = json.loads((PUBLISHED / f"{stem}.json").read_text())
    config = DiTConfig.from_dict(data)
    with torch.device("meta"):
        expected = SanaTransformer2DModel.from_config(data).state_dict()
        original = original_from_diffusers(expected, config.num_layers, config.qk_norm is not None)
    converted = convert_original_dit(original, config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == shapes_of(expected)


def test_original_checkpoint_with_missing_or_unknown_keys_is_refused(tmp_path):
    reference, config = tiny_reference(tmp_path)
    original = original_from_diffusers(reference.state_dict(), config.num_layers, qk_norm=False)

    missing = dict(original)
    del missing["blocks.1.cross_attn.kv_linear.bias"]
    with pytest.raises(CheckpointError, match=r"missing.*blocks\.1\.cross_attn\.kv_linear\.bias"):
        convert_original_dit(missing, config)

    extra = {**original, "blocks.2.attn.qkv.weight": original["blocks.0.attn.qkv.weight"]}
    with pytest.raises(CheckpointError, match=r"unknown.*blocks\.2\.attn\.qkv\.weight"):
        convert_original_dit(extra, config)

    # a SANA-1.5 checkpoint read with a 1.0 config: its qk-norm weights are unknown
    with pytest.raises(CheckpointError, match=r"unknown.*blocks\.0\.attn\.q_norm\.weight"):
        convert_original_dit({**original, "blocks.0.attn.q_norm.weight": torch.ones(64)}, config)


# 4. config reading ---------------------------------------------------------------------------


def test_config_fields_are_exactly_diffusers_arguments_with_its_defaults():
    parameters = dict(inspect.signature(SanaTransformer2DModel.__init__).parameters)
    parameters.pop("self")
    defaults = {name: p.default for name, p in parameters.items()}
    ours = {f.name: f.default for f in dataclasses.fields(DiTConfig)}
    assert ours == defaults
    metadata_only = {"_class_name": "SanaTransformer2DModel", "_diffusers_version": "0.32.0"}
    assert DiTConfig.from_dict(metadata_only) == DiTConfig()


def test_config_without_out_channels_uses_in_channels():
    assert DiTConfig.from_dict({"in_channels": 16, "out_channels": None}).out_channels == 16


@pytest.mark.parametrize(
    "key, value",
    [
        ("guidance_embeds", True),
        ("qk_norm", "rms_norm"),
        ("patch_size", 2),
        ("attention_bias", True),
        ("norm_elementwise_affine", True),
        ("cross_attention_dim", 1024),
        ("interpolation_scale", 0.0),
    ],
)
def test_config_with_unsupported_value_names_the_key(key, value):
    with pytest.raises(ConfigError, match=key) as error:
        DiTConfig.from_dict({key: value})
    print(error.value)


def test_config_with_unknown_key_names_it():
    with pytest.raises(ConfigError, match="use_pe"):
        DiTConfig.from_dict({"num_layers": 2, "use_pe": True})


# 5. the fp16-range clamp ---------------------------------------------------------------------


def quadratic_relu_attention(attention, x: torch.Tensor) -> torch.Tensor:
    """The textbook form, O(N²): out_i = Σ_j (q_i·k_j) v_j / Σ_j q_i·k_j with ReLU q, k; unclamped."""
    heads = attention.heads
    q, k, v = (
        t.unflatten(-1, (heads, -1)).transpose(1, 2)
        for t in (attention.to_q(x), attention.to_k(x), attention.to_v(x))
    )
    weights = torch.relu(q) @ torch.relu(k).transpose(-1, -2)
    out = (weights @ v) / weights.sum(-1, keepdim=True)
    return attention.to_out[0](out.transpose(1, 2).flatten(2))


def test_linear_attention_output_is_clamped_to_fp16_range_in_fp32(tmp_path):
    _, config = tiny_reference(tmp_path)
    torch.manual_seed(0)
    attention = LinearDiT(config).eval().transformer_blocks[0].attn1
    x = torch.randn(2, 16, config.inner_dim)
    with torch.no_grad():
        before = quadratic_relu_attention(attention, x)
        assert rel_err(attention(x), before) < 1e-5  # in range: the ones-pad form is exact
        attention.to_out[0].weight.mul_(1e6)  # now far beyond 65504
        unclamped = quadratic_relu_attention(attention, x)
        out = attention(x)
    assert out.dtype == torch.float32
    assert unclamped.abs().max() > 2 * 65504.0 and (unclamped.abs() > 65504.0).any(dim=-1).all()
    assert out.abs().max() == 65504.0
    assert rel_err(out, unclamped.clamp(-65504.0, 65504.0)) < 1e-5
