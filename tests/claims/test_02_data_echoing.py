"""Chapter 02's claims at the cpu profile (make verify): the time law predicts throughput while e <= R, and under a
slow input side e = 2 before augmentation reaches the target sooner with fewer fresh examples."""

import numpy as np
import pytest
import torch

from accel.experiments import echo as chapter
from accel.experiments import slow_input as law

pytestmark = pytest.mark.claims
DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    cfg = chapter.config("cpu")
    return cfg, chapter.load_data(cfg)


def test_throughput_follows_the_law_while_e_le_R(setup):
    cfg, data = setup
    rows = chapter.law_check(cfg, data, DEVICE, show_progress=False)
    below = [r for r in rows if r["echo factor"] <= r["R"]]
    # both input sides measured (one with the trainer mostly waiting), and several settings at or below the kink
    assert max(r["R"] for r in rows) >= 4 and len(below) >= 6, rows
    # the law fed with the costs of the same run: >= 90% of it where R >= 4, >= 85% where R < 4 (slow_input.LAW_FLOORS:
    # what every recorded run on the 2-core machine reached; at R ~ 2 both processes contend for its 2 shared cores)
    reached, detail = law.law_verdict(rows)
    print(f"law: {detail}; every e <= R: " + ", ".join(f"R {r['R']:.1f} e {r['echo factor']:g} "
                                                     f"{r['measured / modelled']:.2f}" for r in below))
    assert reached, (detail, below)
    # and never above it by more than timing noise: the law is a ceiling
    assert max(r["measured / modelled"] for r in rows) <= 1.05, rows


def test_echoing_reaches_the_target_sooner_on_fewer_fresh_examples(setup):
    cfg, data = setup
    wall = chapter.wall_clock(cfg, data, DEVICE, show_progress=False)
    assert wall["t_up"] / wall["t_down"] >= 2
    base, echoed = wall["runs"][1], wall["runs"][2]
    seconds = [np.mean([r.seconds_to_target for r in runs]) for runs in (base, echoed)]
    fresh = [np.mean([r.fresh_to_target for r in runs]) for runs in (base, echoed)]
    assert seconds[1] <= 0.75 * seconds[0], seconds
    assert fresh[1] <= fresh[0], fresh


def test_every_insertion_point_saves_fresh_examples_at_e2(setup):
    cfg, data = setup
    cfg = chapter.config("cpu", factors=(1, 2))
    grid = chapter.fresh_examples_grid(cfg, data, DEVICE, show_progress=False)
    base = np.mean([r.fresh_to_target for r in grid[(1, "none")]])
    for point in cfg.points:
        assert np.mean([r.fresh_to_target for r in grid[(2, point)]]) < base, point
