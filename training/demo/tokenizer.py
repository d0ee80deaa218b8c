"""The demo text encoder's tokenizer: byte-level BPE learnt from the grammar and the instruction.

Gemma's conventions where the engine relies on them: ids 0–3 are <pad>, <eos>, <bos>, <unk>, and
every encoding starts with <bos> (the DiT reads position 0 as the prompt's first token). Byte-level
means any text tokenizes, so a prompt outside the grammar still encodes, and the whole
"complex human instruction" is in the corpus so that it costs few tokens.
"""

from __future__ import annotations

import random

from .scenes import COLOURS, PHRASES, SHAPES, SIZES, sample_scene

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0, 1, 2, 3 as in Gemma
VOCAB_SIZE = 1024
CORPUS_CAPTIONS = 4000


def corpus(instruction: str, seed: int = 0) -> list[str]:
    """The instruction, every grammar word, and many captions (lower case, as the encoder sees them)."""
    rng = random.Random(f"tokenizer-{seed}")
    words = [*COLOURS, *SHAPES, *SIZES, *PHRASES.values(), "on a background", "on an background", "and"]
    captions = [sample_scene(rng).caption() for _ in range(CORPUS_CAPTIONS)]
    return [instruction, *instruction.splitlines(), *words, *captions]


def train_tokenizer(instruction: str, seed: int = 0, vocab_size: int = VOCAB_SIZE):
    """A transformers fast tokenizer (`PreTrainedTokenizerFast`) that adds <bos> and pads right with id 0."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(instruction, seed), trainer=trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != [0, 1, 2, 3]:
        raise RuntimeError(f"special tokens got ids {ids}, Gemma's layout needs [0, 1, 2, 3]")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", padding_side="right",
    )
