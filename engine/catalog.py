"""The SANA models published on the Hugging Face Hub in the diffusers layout, as data.

One row per model a user can pick in the model manager. `variant` is the one weight variant that is
downloaded where a repository holds several (the 16-bit files the GPU runs; the CPU casts them up);
sizes are approximate, for that variant: the exact total comes from the hub before a download starts.
Facts from the NVlabs/Sana model zoo and the repositories' file listings.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SanaStudioError

# Every published SANA pipeline embeds Gemma-2-2B-IT as its text encoder, so every row carries
# Gemma's terms besides NVIDIA's.
LICENSE_NOTE = (
    "The transformer and autoencoder are under the NVIDIA Source Code License (NSCL v2-custom); "
    "the text encoder is Google's Gemma-2-2B-IT under the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms). If the hub asks for a token, accept the terms on the "
    "model's page and set a Hugging Face token."
)


@dataclass(frozen=True)
class PublishedModel:
    name: str  # the folder name under the models directory, and the id the app stores
    title: str  # what the model manager shows
    repo_id: str
    variant: str | None  # "fp16" / "bf16": the weight files to fetch; None: the plain ones
    download_gb: float  # approximate, decimal GB
    native_size: int  # pixels per side
    license: str = LICENSE_NOTE

    @property
    def page_url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


CATALOG: tuple[PublishedModel, ...] = (
    PublishedModel("sana-0.6b-512", "Sana 0.6B · 512 px", "Efficient-Large-Model/Sana_600M_512px_diffusers",
                   "fp16", 7.7, 512),
    PublishedModel("sana-0.6b-1024", "Sana 0.6B · 1024 px", "Efficient-Large-Model/Sana_600M_1024px_diffusers",
                   "fp16", 7.7, 1024),
    PublishedModel("sana-1.6b-512", "Sana 1.6B · 512 px", "Efficient-Large-Model/Sana_1600M_512px_diffusers",
                   "fp16", 9.7, 512),
    PublishedModel("sana-1.6b-1024", "Sana 1.6B · 1024 px", "Efficient-Large-Model/Sana_1600M_1024px_diffusers",
                   "fp16", 9.7, 1024),
    PublishedModel("sana-1.6b-1024-bf16", "Sana 1.6B · 1024 px (BF16)",
                   "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers", "bf16", 9.7, 1024),
    PublishedModel("sana-1.6b-2k", "Sana 1.6B · 2K", "Efficient-Large-Model/Sana_1600M_2Kpx_BF16_diffusers",
                   "bf16", 9.7, 2048),
    PublishedModel("sana-1.6b-4k", "Sana 1.6B · 4K", "Efficient-Large-Model/Sana_1600M_4Kpx_BF16_diffusers",
                   "bf16", 9.7, 4096),
    PublishedModel("sana-1.5-1.6b-1024", "Sana 1.5 1.6B · 1024 px",
                   "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers", "bf16", 9.7, 1024),
)


def find_published(name: str, catalog: tuple[PublishedModel, ...] = CATALOG) -> PublishedModel:
    for model in catalog:
        if model.name == name:
            return model
    raise SanaStudioError(f"no published model named {name!r}; known: {', '.join(m.name for m in catalog)}")
