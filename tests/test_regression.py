"""The smoke-regression comparison itself, on hand-made results."""

from accel.book.regression import compare, diff_references, make_reference, within


def results(**metrics):
    return {
        "notebook": "x", "profile": "smoke",
        "metrics": {k: {"value": v, "abs": 0.1, "rel": None, "unit": ""} for k, v in metrics.items()},
        "tables": {"t": {"title": "t", "columns": ["a", "b"], "rows": [["r1", 1], ["r2", 2]], "note": ""}},
        "claims": {"c": {"passed": True, "detail": "", "compare": True},
                   "timed": {"passed": True, "detail": "", "compare": False}},
    }


def test_identical_results_pass():
    r = results(acc=0.5)
    assert compare(r, make_reference(r)) == []


def test_metric_outside_tolerance_fails_inside_passes():
    ref = make_reference(results(acc=0.5))
    assert compare(results(acc=0.55), ref) == []
    assert any("acc" in p for p in compare(results(acc=0.65), ref))


def test_missing_and_new_metrics_fail():
    ref = make_reference(results(acc=0.5))
    assert any("missing" in p for p in compare(results(), ref))
    assert any("new" in p for p in compare(results(acc=0.5, loss=1.0), ref))


def test_table_shape_and_claims_are_compared():
    ref = make_reference(results(acc=0.5))
    changed = results(acc=0.5)
    changed["tables"]["t"]["rows"][1][0] = "other"
    assert any("rows" in p for p in compare(changed, ref))
    flipped = results(acc=0.5)
    flipped["claims"]["c"]["passed"] = False
    assert any("claim 'c'" in p for p in compare(flipped, ref))
    timed = results(acc=0.5)
    timed["claims"]["timed"]["passed"] = False  # timing claims: evaluated, outcome not compared
    assert compare(timed, ref) == []
    del timed["claims"]["timed"]
    assert any("timed" in p for p in compare(timed, ref))


def test_within():
    assert within(1.0, 1.05, 0.1, None) and not within(1.0, 1.2, 0.1, None)
    assert within(110.0, 100.0, None, 0.1) and not within(111.0, 100.0, None, 0.1)
    assert within(5.0, 1.0, None, None)  # not compared
    assert not within(float("nan"), 1.0, 0.1, None)


def test_diff_references_reports_changes():
    old = make_reference(results(acc=0.5))
    assert diff_references(old, old) == []
    assert diff_references(None, old) == ["new reference"]
    assert any("acc" in line for line in diff_references(old, make_reference(results(acc=0.7))))
