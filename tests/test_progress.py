"""Progress in the chapters' loops: a live bar when watched, one summary line when executed to be read later."""

from __future__ import annotations

from accel.experiments.progress import STATIC_ENV, SummaryLine, progress_bar


def test_static_progress_prints_one_summary_line(monkeypatch, capsys):
    monkeypatch.setenv(STATIC_ENV, "1")
    with progress_bar(total=3, desc="Table 1", unit="epoch") as bar:
        assert isinstance(bar, SummaryLine)
        for _ in range(3):
            bar.update()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Table 1: 3 epochs in ") and lines[0].endswith(" s")


def test_static_progress_says_how_far_an_interrupted_loop_got_and_stays_quiet_when_disabled(monkeypatch, capsys):
    monkeypatch.setenv(STATIC_ENV, "1")
    bar = progress_bar(total=6, desc="wall clock")
    bar.update(2)
    bar.close()
    bar.close()  # closing twice prints once
    with progress_bar(total=2, desc="hidden", disable=True) as quiet:
        quiet.update()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wall clock: 2 of 6 runs in ")


def test_without_the_variable_it_is_a_tqdm_bar(monkeypatch):
    monkeypatch.delenv(STATIC_ENV, raising=False)
    bar = progress_bar(total=2, desc="live", disable=True)
    assert not isinstance(bar, SummaryLine) and hasattr(bar, "update")
    bar.close()
    monkeypatch.setenv(STATIC_ENV, "0")
    assert not isinstance(progress_bar(total=1, disable=True), SummaryLine)
