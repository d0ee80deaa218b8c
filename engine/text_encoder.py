"""Prompt → Gemma-2 hidden states and mask, as the SANA DiT was trained to read them.

The prompt is lower-cased, prefixed with the "complex human instruction" (CHI), padded on the
right to a fixed length and run through Gemma-2's decoder; the DiT then sees the first token and
the last 299 positions, so the CHI itself is cut away but has shaped every prompt token through
causal attention. The unconditional prompt is encoded without the CHI. diffusers'
`SanaPipeline.encode_prompt` is the parity reference.

Loading weights is not done here: the checkpoint loader builds the `Gemma2Model` and tokenizer.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from resources import resource_path

CHI_FILE = "complex_human_instruction.txt"


def instruction_lines() -> list[str]:
    """The official CHI lines (NVlabs/Sana configs, `chi_prompt`), one per line of the resource."""
    # splitlines keeps the trailing space of the last line, "User Prompt: ", which the model saw.
    return resource_path(CHI_FILE).read_text(encoding="utf-8").splitlines()


class TextEncoder:
    """Turns prompts into the DiT's caption tokens: (embeddings [B, L, hidden], mask [B, L]).

    `model` is a transformers `Gemma2Model` (the decoder, final norm included) and `tokenizer`
    its tokenizer, which adds BOS. Outputs live on the model's device in the model's dtype; the
    mask is int64, as the tokenizer gives it. Every prompt is padded to the same fixed length, so
    encoding prompts one at a time (as PromptCache does) gives what one batch would.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        max_length: int = 300,
        instruction: Sequence[str] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.instruction = "\n".join(instruction_lines() if instruction is None else instruction)
        # With the CHI, sequences are padded to its token count (BOS included) + max_length - 2,
        # leaving the prompt max_length - 2 positions after it, as diffusers does.
        self._instruction_tokens = len(tokenizer.encode(self.instruction))
        self.device = next(model.parameters()).device  # where it computes, wherever it is parked
        self._host_copy: dict[str, Tensor] | None = None  # the weights in CPU memory, once parked

    def park(self) -> None:
        """Free the GPU of the weights until the next encode: Gemma-2-2B's 5 GB in 16 bits is room
        on a small GPU for the DiT and the decode. The cached prompts stay on the device.

        The first park copies the weights to CPU memory, pinned where the system allows, and keeps
        that copy: weights never change, so every later park only drops the GPU tensors, and every
        encode after one copies them back at the bus's full speed. bitsandbytes' 8-bit weights
        cannot move (they are 2.6 GB): they stay.
        """
        if self.device.type == "cpu" or self.parked or getattr(self.model, "is_loaded_in_8bit", False):
            return
        tensors = self._tensors()
        if self._host_copy is None:
            self._host_copy = {name: _pinned(t) for name, t in tensors.items()}
        for name, t in tensors.items():
            t.data = self._host_copy[name]

    def _tensors(self) -> dict[str, Tensor]:
        return {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}

    @property
    def parked(self) -> bool:
        return next(self.model.parameters()).device != self.device

    @torch.no_grad()
    def encode(self, prompts: list[str], with_instruction: bool) -> tuple[Tensor, Tensor]:
        """(embeddings [B, max_length, hidden], mask [B, max_length]) for B prompts.

        with_instruction: True for the positive prompt, False for the negative/unconditional one.
        """
        return self.embed(self.tokenize(prompts, with_instruction))

    def tokenize(self, prompts: list[str], with_instruction: bool) -> dict[str, Tensor]:
        """Token ids and mask on the CPU, padded to the fixed length; no model involved, so a
        trainer can tokenize the next batch in a thread while the GPU runs this one."""
        texts = [p.lower().strip() for p in prompts]
        if with_instruction:
            texts = [self.instruction + t for t in texts]
            length = self._instruction_tokens + self.max_length - 2
        else:
            length = self.max_length
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            padding_side="right",
            max_length=length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}

    def embed(self, tokens: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """`tokenize`'s output through Gemma; gradients flow where enabled (encode turns them off)."""
        if self.parked:
            self.model.to(self.device)
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        hidden = self.model(ids, attention_mask=mask).last_hidden_state
        keep = self.kept_positions(ids.shape[1])
        return hidden[:, keep], mask[:, keep]

    def kept_positions(self, length: int) -> list[int]:
        """Which of a tokenized sequence's `length` positions the DiT reads: BOS and the last
        max_length − 1, which drops the CHI (SANA paper §3.1; diffusers parity)."""
        return [0, *range(length - self.max_length + 1, length)]


TRIM_MULTIPLE = 64  # text lengths after trimming: 64, 128, …, so a CUDA graph serves many prompts


def trim_padding(text: Tensor, mask: Tensor, multiple: int = TRIM_MULTIPLE) -> tuple[Tensor, Tensor]:
    """text [B, L, C] and mask [B, L] without the positions past every row's last real token,
    rounded up to a multiple of `multiple` (at most L).

    SANA's window keeps BOS and the last max_length − 1 positions, of which a 20-token prompt
    fills 22: the rest is padding, masked by −10000 before the cross-attention's softmax, where
    each contributes exactly zero (exp underflows) while costing as much as a real key. Dropped,
    the DiT's output is the same and its cross-attention costs what the prompt needs. Measured on
    an H100 (CFG step, CUDA graph, 22 real positions): identical velocities bit for bit; 1.6B at
    4096² 185.1 → 181.0 ms in FP16 and 142.4 → 138.8 ms in INT8, 0.6B at 1024² 7.20 → 6.96 ms.
    """
    positions = mask.any(dim=0).nonzero()
    last = int(positions.max()) + 1 if len(positions) else 1
    keep = min(mask.shape[1], -(-last // multiple) * multiple)
    return text[:, :keep], mask[:, :keep]


def _pinned(t: Tensor) -> Tensor:
    """A CPU copy of t in page-locked memory (copies to the GPU run at the bus's full speed), or
    in ordinary memory where the system refuses to lock that much."""
    host = t.detach().to("cpu", copy=True)
    try:
        return host.pin_memory()
    except RuntimeError:
        return host


class PromptCache:
    """Encoded prompts, least recently used evicted first, so a new seed costs no encoder run.

    Entries belong to one TextEncoder: asking with another one empties the cache first.
    """

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._encoder: TextEncoder | None = None
        self._entries: OrderedDict[tuple[str, bool], tuple[Tensor, Tensor]] = OrderedDict()

    def get(self, encoder: TextEncoder, prompt: str, with_instruction: bool) -> tuple[Tensor, Tensor]:
        """(embeddings [1, L, hidden], mask [1, L]) of `prompt`, encoding it only on a miss."""
        if encoder is not self._encoder:
            self.clear()
            self._encoder = encoder
        key = (prompt, with_instruction)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = encoder.encode([prompt], with_instruction)
        if self.max_entries > 0:
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()
        self._encoder = None

    def __len__(self) -> int:
        return len(self._entries)
