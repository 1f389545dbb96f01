"""Device resolution and the CUDA backend settings of facepoison's GPU runs."""

import pytest
import torch

from facepoison.errors import UsageError
from facepoison.runtime import resolve_device, tune_cuda


def test_cpu_leaves_the_cuda_settings_alone(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert torch.backends.cudnn.benchmark is False


def test_tune_cuda_turns_on_autotuning_and_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        tune_cuda()
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error():
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu7")
