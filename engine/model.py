"""A SANA model on a device: the loaded DiT, DC-AE, text encoder and scheduler config.

`load_model` reads the published diffusers folder layout (and original NVlabs / efficientvit
weights placed in it), checks every tensor's name and shape against the component's own
config.json before loading, and never unpickles anything but plain tensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from quant import dequantize_model, quantize_model, set_int8

from .accelerate import accelerate_dit, fused_kernels_unavailable
from .checkpoint import (
    TensorInfo,
    check_tensors,
    expected_shapes,
    find_weight_files,
    load_original_pth,
    load_safetensors,
    read_headers,
    read_json,
)
from .dcae import DCAE, DCAEConfig
from .devices import companion_dtype, dit_dtype, dtype_name, resolve_device
from .dit import DiTConfig, LinearDiT
from .errors import CheckpointError, ConfigError
from .original_dcae import convert_original_dcae, looks_like_original_dcae
from .original_dit import convert_original_dit, looks_like_original_dit
from .solver import SchedulerConfig
from .text_encoder import TextEncoder

PIPELINE_CLASSES = ("SanaPipeline",)
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
LATENT_STRIDE = 32


@dataclass
class SanaModel:
    name: str
    path: Path
    device: torch.device
    dit: LinearDiT
    dcae: DCAE
    text_encoder: TextEncoder
    scheduler_config: SchedulerConfig
    checkpoint_dtype: torch.dtype  # the DiT's dtype on disk
    precision: str = "auto"
    notes: tuple[str, ...] = ()  # what loading chose differently from what was asked, and why

    @property
    def dit_config(self) -> DiTConfig:
        return self.dit.config

    @property
    def dcae_config(self) -> DCAEConfig:
        return self.dcae.config

    @property
    def native_size(self) -> int:
        return self.dit.config.sample_size * LATENT_STRIDE

    @property
    def dit_dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    @property
    def precision_name(self) -> str:
        """What the DiT runs in now, as saved in an image's metadata: "int8", or its dtype."""
        return self.precision if self.precision != "auto" else dtype_name(self.dit_dtype)

    def set_precision(self, precision: str) -> None:
        """Switch the DiT's dtype, or W8A8 on and off, for the next generation.

        A cast is exact only between the checkpoint's dtype and fp32; any other switch (fp16 ↔ bf16,
        or back up from a cast-down fp32 checkpoint) re-reads the DiT from disk so that precision
        never drifts across switches. INT8 is made from the float weights in place (milliseconds
        on a GPU) and, on a GPU, parks the quantized layers' float weights in host memory while it
        runs; switching back puts them in place and drops the int8 copies. So each precision holds
        only its own weights on the GPU (1.6B: 1.35 GB of int8 where 2.7 GB of 16-bit weights
        were), and neither switch reads the disk.
        """
        target = dit_dtype(precision, self.device, self.checkpoint_dtype)
        set_int8(self.dit, False)  # the float forward, parked weights back in place, before any cast
        dequantize_model(self.dit)
        current = self.dit_dtype
        if target != current:
            exact = {self.checkpoint_dtype, torch.float32}
            if current in exact and target in exact:
                self.dit.to(target)
            else:
                self.dit = _load_dit(self.path / "transformer", self.dit.config, self.device, target)
        if precision == "int8":  # a layer at a time, so the GPU never holds both precisions
            quantize_model(self.dit, park_float=self.device.type != "cpu")
        self.precision = precision


def load_model(
    path: str | Path,
    device: str = "auto",
    precision: str = "auto",
    on_progress: Callable[[str], None] | None = None,
    text_encoder_8bit: bool = False,
) -> SanaModel:
    """Load a model folder in the published diffusers layout; raise one clear error if it is not.

    `text_encoder_8bit` loads Gemma-2 with bitsandbytes' 8-bit weights (CUDA only, about 2.5 GB
    less for Gemma-2-2B); where that cannot run, it loads in 16 bits and `notes` says why.
    """
    report = on_progress or (lambda message: None)
    root = Path(path).expanduser()
    check_layout(root)
    torch_device = resolve_device(device)
    scheduler_config = SchedulerConfig.from_dict(read_json(root / "scheduler" / "scheduler_config.json"))
    dit_config = DiTConfig.from_dict(read_json(root / "transformer" / "config.json"))
    dcae_config = DCAEConfig.from_dict(read_json(root / "vae" / "config.json"))

    report("Loading the transformer")
    checkpoint_dtype = _checkpoint_dtype(root / "transformer")
    dit = _load_dit(root / "transformer", dit_config, torch_device,
                    dit_dtype(precision, torch_device, checkpoint_dtype))
    report("Loading the autoencoder")
    dcae = _load_module(
        "vae", root / "vae", lambda: DCAE(dcae_config), torch_device,
        companion_dtype(precision, torch_device), looks_like_original_dcae,
        lambda state: convert_original_dcae(state, dcae_config),
    )
    report("Loading the text encoder" + (" in 8 bits" if text_encoder_8bit else ""))
    reason = eight_bit_unavailable(torch_device) if text_encoder_8bit else None
    notes = (f"the text encoder runs in 16 bits: {reason}",) if reason else ()
    text_encoder = _load_text_encoder(root, torch_device, companion_dtype(precision, torch_device),
                                      text_encoder_8bit and not reason)
    if torch_device.type == "cuda" and (why := fused_kernels_unavailable(torch_device)):
        notes += (f"the fused GPU kernels are off ({why}); the pictures come out the same, only slower",)
    for note in notes:
        report(note)
    model = SanaModel(
        name=root.name, path=root, device=torch_device, dit=dit, dcae=dcae,
        text_encoder=text_encoder, scheduler_config=scheduler_config,
        checkpoint_dtype=checkpoint_dtype, precision="auto", notes=notes,
    )
    model.set_precision(precision)
    return model


def check_layout(root: Path) -> None:
    """The folder is a SANA pipeline in the diffusers layout, with every component folder."""
    if not root.is_dir():
        raise CheckpointError(f"{root}: model folder does not exist")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(f"{root}: not a model folder (model_index.json is missing)")
    pipeline_class = read_json(index_path).get("_class_name")
    if pipeline_class not in PIPELINE_CLASSES:
        raise ConfigError(
            f"{index_path}: unknown model {pipeline_class!r}; supported: {', '.join(PIPELINE_CLASSES)}"
        )
    missing = [name for name in COMPONENTS if not (root / name).is_dir()]
    if missing:
        raise CheckpointError(f"{root}: component folder missing: {', '.join(m + '/' for m in missing)}")


def check_model_folder(path: str | Path) -> None:
    """Raise CheckpointError/ConfigError unless `path` is a model folder `load_model` can load.

    The same checks `load_model` makes before reading any weights (layout, every config, every
    tensor's name and shape from the file headers), for a model manager that must not load
    gigabytes to validate an import or a download.
    """
    root = Path(path).expanduser()
    check_layout(root)
    SchedulerConfig.from_dict(read_json(root / "scheduler" / "scheduler_config.json"))
    dit_config = DiTConfig.from_dict(read_json(root / "transformer" / "config.json"))
    dcae_config = DCAEConfig.from_dict(read_json(root / "vae" / "config.json"))
    _check_component("transformer", root / "transformer", lambda: LinearDiT(dit_config), looks_like_original_dit,
                     lambda state: convert_original_dit(state, dit_config))
    _check_component("vae", root / "vae", lambda: DCAE(dcae_config), looks_like_original_dcae,
                     lambda state: convert_original_dcae(state, dcae_config))
    _check_text_encoder(root / "text_encoder")
    tokenizer = root / "tokenizer"
    if not any((tokenizer / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise CheckpointError(f"{tokenizer}: no tokenizer.json or tokenizer.model")


def _check_component(component: str, folder: Path, build: Callable, is_original: Callable, convert: Callable) -> None:
    with torch.device("meta"):
        expected = expected_shapes(build())
    files = find_weight_files(folder)
    if files[0].suffix == ".pth":
        found = {name: TensorInfo(tuple(t.shape), t.dtype, files[0]) for name, t in load_original_pth(files[0]).items()}
    else:
        found = read_headers(files)
    if is_original(found.keys()):
        # Original names are mapped on empty (meta) tensors: the conversion needs only the shapes.
        meta = {name: torch.empty(info.shape, dtype=info.dtype, device="meta") for name, info in found.items()}
        found = {name: TensorInfo(tuple(t.shape), t.dtype, files[0]) for name, t in convert(meta).items()}
    check_tensors(component, expected, found)


def _check_text_encoder(folder: Path) -> None:
    # transformers' own loader only warns about missing weights and would run with random ones.
    from transformers import Gemma2Config, Gemma2Model

    config_data = read_json(folder / "config.json")
    if config_data.get("model_type") != "gemma2":
        raise ConfigError(
            f"{folder / 'config.json'}: text encoder model_type {config_data.get('model_type')!r} "
            f"is not supported; SANA uses 'gemma2'"
        )
    with torch.device("meta"):
        expected = expected_shapes(Gemma2Model(Gemma2Config.from_dict(config_data)))
    check_tensors("text_encoder", expected, read_headers(find_weight_files(folder)))


def _checkpoint_dtype(folder: Path) -> torch.dtype:
    files = find_weight_files(folder)
    if files[0].suffix == ".pth":
        dtypes = Counter(t.dtype for t in load_original_pth(files[0]).values() if t.is_floating_point())
    else:
        dtypes = Counter(info.dtype for info in read_headers(files).values() if info.dtype.is_floating_point)
    return dtypes.most_common(1)[0][0] if dtypes else torch.float32


def _load_dit(folder: Path, config: DiTConfig, device: torch.device, dtype: torch.dtype) -> LinearDiT:
    dit = _load_module(
        "transformer", folder, lambda: LinearDiT(config), device, dtype, looks_like_original_dit,
        lambda state: convert_original_dit(state, config),
    )
    accelerate_dit(dit)  # fused Triton twins on CUDA, same parameters; nothing changes on the CPU
    return dit


def _load_module(
    component: str,
    folder: Path,
    build: Callable[[], nn.Module],
    device: torch.device,
    dtype: torch.dtype,
    is_original: Callable,
    convert_original: Callable,
) -> nn.Module:
    """Build on the meta device, check the files against it, then load the tensors in place."""
    with torch.device("meta"):
        module = build()
    expected = expected_shapes(module)
    files = find_weight_files(folder)
    headers = read_headers(files) if files[0].suffix == ".safetensors" else None
    if headers is not None and not is_original(headers.keys()):
        check_tensors(component, expected, headers)  # before reading gigabytes of tensors
        state = load_safetensors(files, device)
    else:
        original = load_original_pth(files[0]) if headers is None else load_safetensors(files, torch.device("cpu"))
        state = convert_original(original)
        found = {name: TensorInfo(tuple(t.shape), t.dtype, files[0]) for name, t in state.items()}
        check_tensors(component, expected, found)
    state = {name: tensor.to(device=device, dtype=dtype) for name, tensor in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def eight_bit_unavailable(device: torch.device) -> str | None:
    """Why Gemma-2 cannot load in 8 bits on `device` (bitsandbytes' LLM.int8 kernels), or None."""
    if device.type != "cuda":
        return f"8-bit weights need a CUDA GPU (this model runs on the {device.type})"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # noqa: BLE001 - ImportError, or a build without a library for this CUDA
        return f"bitsandbytes cannot run here ({type(error).__name__}: {error})"
    if torch.cuda.get_device_capability(device) < (7, 5):
        return "bitsandbytes' 8-bit kernels need a GPU of compute capability 7.5 or newer"
    return None


def _load_text_encoder(root: Path, device: torch.device, dtype: torch.dtype, eight_bit: bool = False) -> TextEncoder:
    from transformers import AutoTokenizer, Gemma2Model
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our caller reports progress its own way
    folder = root / "text_encoder"
    _check_text_encoder(folder)
    try:
        if eight_bit:
            from transformers import BitsAndBytesConfig

            model = Gemma2Model.from_pretrained(
                folder, dtype=dtype, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                device_map={"": device.index or 0},
            )
        else:
            model = Gemma2Model.from_pretrained(folder, dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    except OSError as error:
        raise CheckpointError(f"{root}: cannot read the text encoder or tokenizer ({error})") from None
    return TextEncoder(model.eval().requires_grad_(False), tokenizer)
