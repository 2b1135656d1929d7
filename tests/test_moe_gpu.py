"""Chapter 04 on a CUDA device: the gpu profile's precision paths (a bfloat16 router, fp16 autocast with loss scaling)
train, and the set-up cell's probe and estimate work there. Skipped without CUDA (CI has none)."""

import math

import pytest
import torch

from accel.datasets.text import TextCorpus
from accel.experiments import moe as chapter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def setup():
    generator = torch.Generator().manual_seed(0)
    data = TextCorpus("random bytes", torch.randint(256, (200_000,), generator=generator, dtype=torch.uint8),
                      torch.randint(256, (20_000,), generator=generator, dtype=torch.uint8), None, {})
    cfg = chapter.config("gpu", d_model=64, n_heads=4, d_ff=128, seq_len=64, batch_size=8, steps=6, warmup=2,
                         log_every=2, eval_windows=16, val_every=3, seeds=(0, 1), stressor_seeds=(0,))
    return cfg, data, torch.device("cuda")


def test_precision_arms_and_the_fp16_stressor_train_on_cuda(setup):
    cfg, data, device = setup
    arms = chapter.router_precision_arms(cfg) + [a for a in chapter.stressor_arms(cfg) if a.precision == "fp16"]
    runs = chapter.run_arms(cfg, data, device, arms, cfg.seeds[:1], desc="gpu", show_progress=False)
    for name, (run,) in runs.items():
        assert run.curve and all(math.isfinite(c["loss"]) for c in run.curve), name
        assert math.isfinite(run.curve[-1]["top_logit"]), name
        assert not (run.diverged and name.startswith("healthy")), name


def test_probe_and_estimate_on_cuda(setup):
    cfg, _, device = setup
    step, forward = chapter.probe_step(cfg, chapter.recipe_arm(cfg), device)
    assert step > 0 and forward > 0
    estimate = chapter.cost_model(cfg, device)(cfg)
    assert estimate.seconds > 0 and estimate.basis.startswith("cuda") and "fp16 step" in estimate.basis
