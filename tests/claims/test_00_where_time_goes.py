"""Chapter 00's claims at the cpu profile (make verify): the overlap law, measured on both sides of its kink with each
run's own costs, is a ceiling the pipeline nearly reaches while e <= R and flat beyond."""

import pytest
import torch

from accel.experiments import slow_input as law
from accel.experiments import where_time_goes as chapter

pytestmark = pytest.mark.claims


@pytest.fixture(scope="module")
def law_rows():
    return chapter.overlap_law_check(chapter.config("cpu"), torch.device("cpu"), seed=0, progress=False)


def test_both_sides_of_the_kink_are_measured(law_rows):
    sides = law.kink_sides(law_rows)
    for target in chapter.config("cpu").ratios:
        assert sides.get(f"R ≈ {target:g}: e <= R", 0) >= 1 and sides.get(f"R ≈ {target:g}: e > R", 0) >= 1, sides


def test_law_is_reached_below_the_kink_and_never_beaten(law_rows):
    reached, detail = law.law_verdict(law_rows)
    assert reached, detail
    assert law.ceiling_verdict(law_rows)[0], law.ceiling_verdict(law_rows)[1]


def test_echo_stops_paying_beyond_the_kink(law_rows):
    """Past e = R more echoing buys nothing: from e = 4 to e = 8 the measured gain stays within 15% of the law's gain
    min(8, R) / min(4, R) (each row's own costs), and where both settings are past the kink (R <= 4) within 15% of
    flat. (An input side measured at R between 4 and 8 still gains up to R / 4 from e = 8, as the law says.)"""
    for target in chapter.config("cpu").ratios:
        rows = {row["echo factor"]: row for row in law_rows if row["target R"] == target}
        gain = rows[8]["measured steps/s"] / rows[4]["measured steps/s"]
        law_gain = rows[8]["modelled steps/s"] / rows[4]["modelled steps/s"]
        assert gain <= 1.15 * law_gain, (target, gain, law_gain, rows)
        if max(rows[4]["R"], rows[8]["R"]) <= 4:
            assert gain <= 1.15, (target, gain, rows)
