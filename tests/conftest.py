"""Fixtures shared by several test files, and the smoke chapters' time budget report."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine's oversubscription (two threads on two
    shared cores once made a CTR model fit test 50x slower). Use with pytestmark = pytest.mark.usefixtures(...)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# DESIGN.md: smoke takes seconds on one core. Over this, a chapter is reported as outgrowing it; never a failure, since
# a busy machine is slower, not wrong.
SMOKE_BUDGET_S = 60


@pytest.fixture(scope="session")
def smoke_timings(pytestconfig):
    """(chapter, seconds) of each smoke run, printed at the end of the session."""
    return pytestconfig.__dict__.setdefault("_accel_smoke_timings", [])


def pytest_terminal_summary(terminalreporter, config):
    timings = config.__dict__.get("_accel_smoke_timings")
    if not timings:
        return
    terminalreporter.section("smoke chapters: wall time (reported, not asserted)")
    for chapter, seconds in timings:
        note = f"  over the {SMOKE_BUDGET_S} s budget" if seconds > SMOKE_BUDGET_S else ""
        terminalreporter.write_line(f"{chapter}: {seconds:.1f} s{note}")
    terminalreporter.write_line(f"all chapters: {sum(s for _, s in timings):.0f} s")
