"""Chapter 04's claims at the cpu profile (make verify): the router z-loss keeps logits small at no quality cost and
its runs never diverge; the balance loss raises routing entropy and cuts drops; drops sit above the uniform floor."""

import math

import pytest
import torch

from accel.experiments import moe as chapter

pytestmark = pytest.mark.claims
DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    cfg = chapter.config("cpu")
    return cfg, chapter.load_data(cfg), {}


@pytest.fixture(scope="module")
def stability(setup):
    cfg, data, cache = setup
    return chapter.run_arms(cfg, data, DEVICE, chapter.stability_arms(), cfg.seeds, desc="stability",
                            show_progress=False, cache=cache)


def test_z_loss_keeps_logsumexp_near_zero_at_no_quality_cost(stability):
    base, z = stability["baseline (no z-loss)"], stability["z-loss 1e-3"]
    lse_base = chapter.summarize([r.final("mean_logsumexp") for r in base])[0]
    lse_z = chapter.summarize([r.final("mean_logsumexp") for r in z])[0]
    assert abs(lse_z) < 1.0 and lse_base > 5 * max(abs(lse_z), 0.2), (lse_base, lse_z)
    val_base, val_z = (chapter.summarize([r.val_loss for r in runs]) for runs in (base, z))
    assert val_z[0] <= val_base[0] + max(2 * max(val_base[1], val_z[1]), 0.01), (val_z, val_base)


def test_z_loss_runs_never_diverge(setup, stability):
    cfg, data, cache = setup
    z_arms = [arm for arm in chapter.stressor_arms(cfg) if arm.name.endswith("z-loss 1e-3")]
    stressors = chapter.run_arms(cfg, data, DEVICE, z_arms, cfg.stressor_seeds, desc="stressors",
                                 show_progress=False, cache=cache)
    runs = [r for name, rs in {**stability, **stressors}.items() if "z-loss 1e" in name for r in rs]
    assert len(runs) >= 2 * len(cfg.seeds) + len(z_arms) * len(cfg.stressor_seeds)
    assert not any(r.diverged for r in runs), [(r.arm, r.seed, r.diverged_at) for r in runs if r.diverged]


def test_balance_loss_raises_entropy_and_cuts_drops_above_the_floor(setup):
    cfg, data, cache = setup
    study = chapter.balance_study(cfg, data, DEVICE, show_progress=False, cache=cache)
    with_b, without_b = study["arms"]
    rows = study["rows"]
    assert rows[0][with_b + " entropy"] > rows[0][without_b + " entropy"]
    assert rows[0][with_b + " entropy"] <= math.log(cfg.num_experts) + 1e-6
    for row in rows:
        if 1.0 <= row["CF"] <= 1.25:
            assert row[with_b] < row[without_b], row
        for arm in (with_b, without_b):
            assert row[arm] >= row["uniform floor"] - 0.002, (arm, row)
