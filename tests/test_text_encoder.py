"""TextEncoder against diffusers' SanaPipeline.encode_prompt, on a tiny random Gemma-2."""

import pytest
import torch
from diffusers import SanaPipeline
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

from engine.text_encoder import (
    PromptCache,
    TextEncoder,
    instruction_lines,
    trim_padding,
)

TOLERANCE = 1e-5  # relative error, fp32
CPU = torch.device("cpu")
LONG_PROMPT = " ".join(["a red car on a street at night"] * 60)  # 420 words: truncated
PROMPTS = ["A photo of a Cat  ", "mountains", LONG_PROMPT]
NEGATIVES = ["", "blurry", "A cat"]


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer that, like Gemma's, puts BOS in front of every sequence."""
    corpus = instruction_lines() + ["a photo of a cat", "a red car on a street at night", "mountains"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def gemma(tokenizer):
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return Gemma2Model(config).eval()


@pytest.fixture(scope="module")
def reference(tokenizer, gemma):
    """diffusers' embeddings: (positive, positive mask, negative, negative mask)."""
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=gemma, vae=None, transformer=None, scheduler=None)
    with torch.no_grad():
        return pipe.encode_prompt(
            PROMPTS, negative_prompt=NEGATIVES, device=CPU, complex_human_instruction=instruction_lines()
        )


class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    @property
    def device(self):
        return self.inner.device

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_resource_holds_the_eight_official_instruction_lines():
    lines = instruction_lines()
    assert len(lines) == 8
    assert '"Enhanced prompt"' in lines[0]
    assert lines[-1] == "User Prompt: "


def test_positive_prompts_with_instruction_match_diffusers(tokenizer, gemma, reference):
    ref_embeds, ref_mask, _, _ = reference
    embeds, mask = TextEncoder(gemma, tokenizer).encode(PROMPTS, with_instruction=True)
    assert embeds.shape == (3, 300, 32) and mask.shape == (3, 300)
    assert rel_err(embeds, ref_embeds) < TOLERANCE
    assert torch.equal(mask, ref_mask)
    assert mask[2].sum() == 300  # the long prompt fills every kept position: it was truncated


def test_negative_prompts_without_instruction_match_diffusers(tokenizer, gemma, reference):
    _, _, ref_embeds, ref_mask = reference
    embeds, mask = TextEncoder(gemma, tokenizer).encode(NEGATIVES, with_instruction=False)
    assert rel_err(embeds, ref_embeds) < TOLERANCE
    assert torch.equal(mask, ref_mask)


def test_prompts_encoded_one_at_a_time_equal_one_batch(tokenizer, gemma, reference):
    ref_embeds, ref_mask, _, _ = reference
    encoder = TextEncoder(gemma, tokenizer)
    rows = [encoder.encode([prompt], with_instruction=True) for prompt in PROMPTS]
    assert rel_err(torch.cat([r[0] for r in rows]), ref_embeds) < TOLERANCE
    assert torch.equal(torch.cat([r[1] for r in rows]), ref_mask)


def test_cache_hit_does_not_run_the_model(tokenizer, gemma):
    model = CountingModel(gemma)
    encoder, cache = TextEncoder(model, tokenizer), PromptCache()
    first, first_mask = cache.get(encoder, "a photo of a cat", with_instruction=True)
    again, again_mask = cache.get(encoder, "a photo of a cat", with_instruction=True)
    assert model.calls == 1
    assert again is first and again_mask is first_mask
    cache.get(encoder, "a photo of a cat", with_instruction=False)  # another key: runs once more
    assert model.calls == 2


def test_cache_entries_belong_to_one_encoder(tokenizer, gemma):
    model = CountingModel(gemma)
    cache = PromptCache()
    cache.get(TextEncoder(model, tokenizer), "mountains", with_instruction=False)
    cache.get(TextEncoder(model, tokenizer), "mountains", with_instruction=False)
    assert model.calls == 2


def test_cache_evicts_least_recently_used(tokenizer, gemma):
    model = CountingModel(gemma)
    encoder, cache = TextEncoder(model, tokenizer), PromptCache(max_entries=2)
    for prompt in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        cache.get(encoder, prompt, with_instruction=False)
    assert model.calls == 3 and len(cache) == 2
    cache.get(encoder, "a", with_instruction=False)
    cache.get(encoder, "c", with_instruction=False)
    assert model.calls == 3
    cache.get(encoder, "b", with_instruction=False)
    assert model.calls == 4


def test_trimming_keeps_every_rows_last_real_token_and_rounds_up():
    text = torch.randn(3, 300, 4)
    mask = torch.zeros(3, 300, dtype=torch.int64)
    mask[0, 0] = 1  # the unconditional "": BOS alone
    mask[1, [0, *range(1, 23)]] = 1  # BOS and a 22-token prompt
    mask[2, [0, 70]] = 1  # not contiguous: a row's last real token decides, not its count
    trimmed, trimmed_mask = trim_padding(text, mask, multiple=64)
    assert trimmed.shape == (3, 128, 4) and trimmed_mask.shape == (3, 128)
    assert torch.equal(trimmed, text[:, :128]) and trimmed_mask.sum() == mask.sum()
    assert trim_padding(text[:2], mask[:2], multiple=64)[0].shape[1] == 64
    full = torch.ones(2, 300, dtype=torch.int64)
    assert trim_padding(text[:2], full, multiple=64)[0].shape[1] == 300  # never longer than given


def test_sana_prompts_fill_only_a_few_of_the_kept_positions(tokenizer, gemma):
    """Why trimming pays: of the 300 positions the DiT reads, a short prompt fills BOS + its own."""
    encoder = TextEncoder(gemma, tokenizer)
    _, mask = encoder.encode(["a cat on a mat"], with_instruction=True)
    _, negative = encoder.encode([""], with_instruction=False)
    assert mask.shape[1] == negative.shape[1] == 300
    assert int(mask.sum()) < 20 and int(negative.sum()) <= 2
    assert trim_padding(torch.zeros(2, 300, 1), torch.cat([negative, mask]))[0].shape[1] == 64
