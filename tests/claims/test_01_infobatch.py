"""Chapter 01's claims at the cpu profile (make verify): lossless at r = 0.5 with a real saving, better than static
random pruning at the same cost, and an unbiased rescaled gradient where hard pruning is biased."""

import numpy as np
import pytest
import torch

from accel.experiments import infobatch as chapter

pytestmark = pytest.mark.claims
DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    cfg = chapter.config("cpu")
    return cfg, chapter.load_data(cfg, DEVICE)


@pytest.fixture(scope="module")
def table1(setup):
    cfg, data = setup
    return chapter.table1(cfg, data, DEVICE, show_progress=False)


def test_infobatch_is_lossless_and_saves(table1):
    full = chapter.summarize(table1["full data"])
    ib = chapter.summarize(table1["InfoBatch r=0.5"], table1["full data"])
    margin = max(0.5, 2 * max(full["accuracy_std"], ib["accuracy_std"]))
    assert ib["accuracy"] >= full["accuracy"] - margin, (ib, full)
    assert ib["saved"] >= 0.20, ib
    # the saving is real work not done: most of it shows up on the wall clock. The rest is the sampler's own per-epoch
    # draw (inside the timed region since the runs time it) and per-epoch fixed costs, which the chapter measures; the
    # recorded quiet cpu run kept 0.79 of it (22.5% of wall clock for 28.6% of sample-iterations).
    assert ib["wall_saved"] >= 0.6 * ib["saved"], ib


def test_random_pruning_is_worse_at_the_same_cost(table1):
    ib = chapter.summarize(table1["InfoBatch r=0.5"])
    for name in (chapter.STATIC, chapter.DYNAMIC):
        random = chapter.summarize(table1[name])
        assert abs(random["saved"] - ib["saved"]) < 0.02, name
        assert random["accuracy"] < ib["accuracy"], (name, random, ib)


def test_infobatch_reaches_the_target_with_fewer_samples(table1):
    """The ledger: first crossing of the target accuracy, every seed."""
    from accel.experiments.ledger import entry_from_runs

    cfg = chapter.config("cpu")
    full = entry_from_runs("full", chapter.ledger_curves(table1["full data"]), cfg.target_accuracy)
    ib = entry_from_runs("ib", chapter.ledger_curves(table1["InfoBatch r=0.5"]), cfg.target_accuracy)
    assert full.samples_to_target is not None and ib.samples_to_target is not None
    assert ib.samples_to_target < full.samples_to_target


def test_rescaled_gradient_is_unbiased_and_hard_pruning_is_not(setup):
    cfg, data = setup
    mc = chapter.unbiasedness(cfg, data, DEVICE)
    assert mc["prune below mean, rescaled"]["bias"] < 0.02
    assert mc["prune below mean, not rescaled"]["bias"] > 5 * mc["prune below mean, rescaled"]["bias"]
    assert np.isfinite(mc["prune above mean, rescaled"]["spread"])
