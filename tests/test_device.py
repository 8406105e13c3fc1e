import pytest
import torch

from cmdr_iad.device import check_device_name, resolve_device
from cmdr_iad.errors import UserInputError


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_names(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["abacus", "cuda:", "cuda:x", "cuda:-1", "cuda:1:2", "CPU", "", "gpu"])
def test_bad_devices_are_user_errors(name):
    with pytest.raises(UserInputError, match="unknown device"):
        resolve_device(name)


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(UserInputError, match="CUDA is not available"):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_index_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UserInputError, match=r"cuda:2 was requested but only 2 CUDA device"):
        resolve_device("cuda:2")
