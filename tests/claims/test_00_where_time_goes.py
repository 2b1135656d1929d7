"""Chapter 00's claims at the cpu profile (make verify): the overlap law holds as a ceiling that is nearly reached."""

import numpy as np
import pytest
import torch

from accel.experiments import where_time_goes as chapter

pytestmark = pytest.mark.claims


@pytest.fixture(scope="module")
def law_rows():
    return chapter.overlap_law_check(chapter.config("cpu"), torch.device("cpu"), seed=0, progress=False)


def test_overlap_law_predicts_throughput(law_rows):
    ratios = np.array([row["measured / modelled"] for row in law_rows])
    # Most settings within 25% of the law, and the median close to it.
    assert np.mean(np.abs(ratios - 1) <= 0.25) >= 0.75, ratios
    assert 0.8 <= np.median(ratios) <= 1.1, ratios


def test_echo_raises_throughput_only_when_input_bound(law_rows):
    for target in {row["target R"] for row in law_rows}:
        rows = {row["echo factor"]: row for row in law_rows if row["target R"] == target}
        gain = rows[2]["measured steps/s"] / rows[1]["measured steps/s"]
        R = rows[1]["R"]
        if R >= 2.5:  # input-bound: doubling e nearly doubles steps/s
            assert gain >= 1.6, (R, gain)
        elif R <= 0.7:  # step-bound: echoing buys (almost) nothing
            assert gain <= 1.25, (R, gain)


def test_idle_share_falls_with_echo_when_input_bound(law_rows):
    for target in {row["target R"] for row in law_rows}:
        rows = sorted((r for r in law_rows if r["target R"] == target), key=lambda r: r["echo factor"])
        if rows[0]["R"] >= 2.5:
            assert rows[-1]["measured idle"] < rows[0]["measured idle"]
