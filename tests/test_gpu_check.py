"""make gpu-check: refuses to start without CUDA, and runs each benchmark on the GPU."""

from pathlib import Path

import pytest
import torch

from accel.book import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(capsys):
    assert gpu_check.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_every_benchmark_gets_a_gpu_command(tmp_path):
    scripts = sorted(gpu_check.BENCHMARKS.glob("bench_*.py"))
    assert scripts
    for script in scripts:
        command = gpu_check.benchmark_command(script, tmp_path / "out.json")
        assert command[1] == str(script) and "--out" in command
        assert ("--device" in command) == ("--device" in Path(script).read_text())
