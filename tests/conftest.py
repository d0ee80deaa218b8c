import os

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SANA model folder saved by diffusers' SanaPipeline."""
    from tests.tiny_models import save_tiny_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny-sana"
    save_tiny_pipeline(folder)
    return folder


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (runs on the device machine)")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
