"""Chapter 02's gpu profile on a CUDA device: every part's code path, a step or two each, on the CIFAR-10 fixture
(skipped without CUDA; tests/test_echo_experiments.py runs the same path on CPU)."""

import pytest
import torch
from test_echo_experiments import run_gpu_profile_path  # tests/test_echo_experiments.py

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_gpu_profile_path_runs_every_part_on_cuda(tmp_path, monkeypatch):
    run_gpu_profile_path(torch.device("cuda"), tmp_path, monkeypatch)
