"""Shared pytest configuration: GPU skipping and the `device` fixture."""

import pytest
import torch

MODELS = ["MAP", "BSC", "HRR", "FHRR"]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Runs a test on the CPU and, where CUDA exists, on the GPU."""
    return request.param


@pytest.fixture(params=MODELS)
def vsa(request):
    return request.param
