"""Chapter 04's claims at the cpu profile (make verify): the router z-loss pins the top router logit at no resolved
quality cost and its runs never diverge; the balance loss raises routing entropy and cuts drops; drops sit above the
uniform floor."""

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


def test_z_loss_pins_the_top_logit_at_no_resolved_quality_cost(setup, stability):
    cfg = setup[0]
    summary = chapter.stability_summary(stability)
    base, z = summary["baseline (no z-loss)"], summary["z-loss 1e-3"]
    ln_e = math.log(cfg.num_experts)
    # logsumexp ~ 0 pins each token's top logit into [-ln E, 0]; the losing logits are free to fall below it
    assert -ln_e - 0.25 <= z["top_logit"] <= 0.25 and base["top_logit"] > 1.0, (z, base)
    assert z["lowest_logit"] < -ln_e, z
    assert abs(z["lse"][0]) < 1.0 and base["lse"][0] > 5 * max(abs(z["lse"][0]), 0.2), (base["lse"], z["lse"])
    paired = chapter.paired_difference(stability["z-loss 1e-3"], stability["baseline (no z-loss)"])
    assert paired["verdict"] != "worse", paired


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
