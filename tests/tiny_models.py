"""Tiny random SANA components in the published diffusers layout, built with the reference code.

Shared by the tests: a whole pipeline folder (`save_tiny_pipeline`) and the pieces it is made of.
Sizes are the smallest that still exercise every block type and 32× compression.
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_HIDDEN = 32
WORDS = (
    "a an the of on in at and with to is are red green blue yellow orange purple white black "
    "small large circle square triangle star left right top bottom center background cat dog "
    "sleeping city street photo of user prompt enhanced given generate description image "
    "detailed visual descriptions suitable for generation"
).split()


def make_tokenizer():
    """A word-level tokenizer with Gemma's special tokens, BOS prepended like Gemma's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(WORDS)))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", padding_side="right",
    )


def make_text_encoder(vocab_size: int, seed: int = 0):
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return Gemma2Model(config).eval()


def make_transformer(seed: int = 0, **overrides):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    config = dict(
        in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64,
        caption_channels=TEXT_HIDDEN, mlp_ratio=2.5, sample_size=4, patch_size=1,
    )
    config.update(overrides)
    model = SanaTransformer2DModel(**config).eval()
    _randomize(model)
    return model


def make_vae(seed: int = 0):
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    multiscales = ((), (), (), (5,), (5,), (5,))
    model = AutoencoderDC(
        in_channels=3, latent_channels=32, attention_head_dim=8,
        encoder_block_types=blocks, decoder_block_types=blocks,
        encoder_block_out_channels=(8, 8, 16, 16, 32, 32), decoder_block_out_channels=(8, 8, 16, 16, 32, 32),
        encoder_layers_per_block=(1, 1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1, 1),
        encoder_qkv_multiscales=multiscales, decoder_qkv_multiscales=multiscales,
        upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    ).eval()
    _randomize(model)
    return model


def make_scheduler(flow_shift: float = 3.0):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
        solver_order=2, prediction_type="flow_prediction", algorithm_type="dpmsolver++",
        solver_type="midpoint", lower_order_final=True, use_flow_sigmas=True, flow_shift=flow_shift,
        final_sigmas_type="zero",
    )


def make_pipeline(seed: int = 0):
    from diffusers import SanaPipeline

    tokenizer = make_tokenizer()
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=make_text_encoder(len(tokenizer), seed),
        vae=make_vae(seed), transformer=make_transformer(seed), scheduler=make_scheduler(),
    )


def save_tiny_pipeline(folder: Path, seed: int = 0):
    pipeline = make_pipeline(seed)
    pipeline.save_pretrained(folder)
    return pipeline


def _randomize(model: torch.nn.Module) -> None:
    """Zero-initialised layers (AdaLN tables, output projections) would hide mistakes: fill them.

    Norm weights stay near one so activations keep a sane scale.
    """
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if "norm" in name and name.endswith("weight") and tensor.dim() == 1:
                tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
            elif tensor.abs().max() == 0:
                tensor.copy_(0.05 * torch.randn(tensor.shape, generator=generator))
