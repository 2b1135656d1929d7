"""The synthetic CTR twin and the fast metrics (accel.datasets.ctr)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from accel.datasets.ctr import (
    CTRSplit,
    SyntheticCTRSpec,
    auc,
    bayes_metrics,
    expected_auc,
    id_counts,
    logloss,
    make_synthetic_ctr,
    zipf_probabilities,
)

SMALL = SyntheticCTRSpec(vocab_sizes=(500, 100, 20), train_rows=4000, test_rows=3000, seed=3)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.3
    s = np.round(rng.normal(size=5000) + y, 1)  # rounding makes many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(torch.from_numpy(y.astype(np.float32)), torch.from_numpy(s)) == pytest.approx(roc_auc_score(y, s))


def test_auc_edge_cases():
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert auc([0, 1], [0.9, 0.1]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="shape"):
        auc([0, 1], [0.1, 0.2, 0.3])


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(1)
    p = rng.random(1000)
    y = rng.random(1000) < p
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_zipf_probabilities():
    p = zipf_probabilities(100, 1.1)
    assert p.sum() == pytest.approx(1.0)
    assert np.all(np.diff(p) < 0)
    assert p[0] / p[1] == pytest.approx(2**1.1)


def test_generator_is_deterministic_and_seeded():
    a = make_synthetic_ctr(SMALL, cache_files=False)
    b = make_synthetic_ctr(SMALL, cache_files=False)
    c = make_synthetic_ctr(SyntheticCTRSpec(**{**SMALL.__dict__, "seed": 4}), cache_files=False)
    np.testing.assert_array_equal(a.train.ids, b.train.ids)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.ids, c.train.ids)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    make_synthetic_ctr(SMALL, cache_files=False)
    assert torch.equal(state, torch.get_rng_state())  # no global reseeding
    np.testing.assert_array_equal(np_state, np.random.get_state()[1])


def test_generator_shapes_rate_and_zipf():
    spec = SyntheticCTRSpec(vocab_sizes=(1000, 50), train_rows=40_000, test_rows=1000, click_rate=0.3)
    data = make_synthetic_ctr(spec, cache_files=False)
    assert data.train.ids.shape == (40_000, 2) and data.test.ids.shape == (1000, 2)
    assert data.field_dims == [1000, 50]
    assert np.mean(data.train.click_probability) == pytest.approx(0.3, abs=1e-6)  # the bias is solved for it
    assert abs(np.mean(data.train.labels) - 0.3) < 0.01
    counts = id_counts(data.train.ids, data.field_dims)[0]
    expected = zipf_probabilities(1000, spec.zipf_exponent) * 40_000
    assert counts[0] == pytest.approx(expected[0], rel=0.05)
    assert counts[9] == pytest.approx(expected[9], rel=0.15)


def test_bayes_auc_matches_monte_carlo():
    """The exact expected Bayes AUC against AUCs of p* on freshly drawn labels."""
    data = make_synthetic_ctr(SMALL, cache_files=False)
    p = np.asarray(data.test.click_probability)
    exact = expected_auc(p)
    rng = np.random.default_rng(7)
    draws = [roc_auc_score(rng.random(len(p)) < p, p) for _ in range(300)]
    assert exact == pytest.approx(np.mean(draws), abs=3 * np.std(draws) / np.sqrt(len(draws)) + 1e-3)
    metrics = bayes_metrics(data.test)
    assert metrics["expected_auc"] == exact
    assert metrics["auc"] == pytest.approx(roc_auc_score(data.test.labels, p))
    entropy = -np.mean(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert metrics["expected_logloss"] == pytest.approx(entropy)
    mc_logloss = np.mean([log_loss(rng.random(len(p)) < p, p) for _ in range(50)])
    assert metrics["expected_logloss"] == pytest.approx(mc_logloss, abs=0.01)


def test_expected_auc_by_brute_force():
    rng = np.random.default_rng(2)
    p = np.round(rng.random(40), 1)  # with ties
    num = den = 0.0
    for i in range(40):
        for j in range(40):
            if i != j:
                w = p[i] * (1 - p[j])
                den += w
                num += w * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    assert expected_auc(p) == pytest.approx(num / den, abs=1e-12)


def test_bayes_metrics_need_probabilities():
    with pytest.raises(ValueError, match="click probabilities"):
        bayes_metrics(CTRSplit(ids=np.zeros((2, 1), int), labels=np.array([0, 1])))


def test_rare_signal_and_high_frequency_only():
    spec = SyntheticCTRSpec(vocab_sizes=(2000, 300), train_rows=20_000, test_rows=2000, rare_count=20)
    full = make_synthetic_ctr(spec, cache_files=False)
    hf = make_synthetic_ctr(SyntheticCTRSpec(**{**spec.__dict__, "high_frequency_only": True}), cache_files=False)
    first_rare = full.metadata["rare_first_rank"]
    assert all(0 < r < v for r, v in zip(first_rare, spec.vocab_sizes))
    assert hf.field_dims == [r + 1 for r in first_rare]  # frequent IDs plus one out-of-vocabulary ID
    assert hf.train.ids.max(axis=0).tolist() == first_rare
    # the same rows: frequent IDs unchanged, rare ones mapped to the OOV id
    frequent = np.asarray(full.train.ids) < np.array(first_rare)
    np.testing.assert_array_equal(np.asarray(hf.train.ids)[frequent], np.asarray(full.train.ids)[frequent])
    # with rare IDs silent the true model is less informative
    assert bayes_metrics(hf.test)["expected_auc"] < bayes_metrics(full.test)["expected_auc"]


def test_cache_roundtrip(tmp_path):
    a = make_synthetic_ctr(SMALL, root=tmp_path)
    assert isinstance(a.train.ids, np.memmap) or a.train.ids.base is not None  # memory-mapped
    folders = list((tmp_path / "ctr-synthetic").iterdir())
    assert len(folders) == 1 and (folders[0] / "manifest.json").is_file()
    assert not [p for p in (tmp_path / "ctr-synthetic").iterdir() if p.name.startswith(".part-")]
    b = make_synthetic_ctr(SMALL, root=tmp_path)
    np.testing.assert_array_equal(a.train.ids, b.train.ids)
    ids, dense, labels = b.train.tensors()
    assert ids.dtype == torch.int32 and dense is None and labels.dtype == torch.float32
    assert ids.data_ptr() == torch.from_numpy(b.train.ids).data_ptr()  # no copy


def test_spec_validation():
    with pytest.raises(ValueError, match="vocab_sizes"):
        SyntheticCTRSpec(vocab_sizes=(1,))
    with pytest.raises(ValueError, match="click_rate"):
        SyntheticCTRSpec(click_rate=1.0)
    with pytest.raises(ValueError, match="train_rows"):
        SyntheticCTRSpec(train_rows=0)
    with pytest.raises(ValueError, match="rare_signal"):
        SyntheticCTRSpec(rare_signal=-1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_rows": 1.5}, "Invalid train_rows: 1.5; expected an int >= 1"),
        ({"train_rows": 200.0}, "Invalid train_rows: 200.0; expected an int >= 1"),
        ({"test_rows": True}, "Invalid test_rows: True; expected an int >= 1"),
        ({"latent_dim": 0}, "Invalid latent_dim: 0; expected an int >= 1"),
        ({"seed": -1}, "Invalid seed: -1; expected an int >= 0"),
        ({"seed": 1.0}, "Invalid seed: 1.0; expected an int >= 0"),
        ({"seed": "0"}, "Invalid seed: '0'; expected an int >= 0"),
        ({"vocab_sizes": (10, 2.5)}, r"Invalid vocab_sizes: \(10, 2.5\); expected .* ints >= 2"),
        ({"vocab_sizes": (10, True)}, r"Invalid vocab_sizes: \(10, True\); expected .* ints >= 2"),
        ({"vocab_sizes": ()}, r"Invalid vocab_sizes: \(\); expected .* ints >= 2"),
        ({"vocab_sizes": 10}, r"Invalid vocab_sizes: 10; expected .* ints >= 2"),
        ({"zipf_exponent": "1.1"}, "Invalid zipf_exponent: '1.1'; expected a finite number > 0"),
        ({"click_rate": float("nan")}, "Invalid click_rate: nan; expected a number in \\(0, 1\\)"),
        ({"rare_count": float("inf")}, "Invalid rare_count: inf; expected a finite number >= 0"),
        ({"high_frequency_only": "no"}, "Invalid high_frequency_only: 'no'; expected True or False"),
    ],
)
def test_spec_rejects_wrong_types_and_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticCTRSpec(**kwargs)


def test_spec_accepts_numpy_numbers_as_plain_python_ones():
    spec = SyntheticCTRSpec(
        vocab_sizes=(np.int64(30), 20), train_rows=np.int32(50), seed=np.int64(3), zipf_exponent=np.float64(1.1),
        high_frequency_only=np.bool_(False),
    )
    plain = SyntheticCTRSpec(vocab_sizes=(30, 20), train_rows=50, seed=3, zipf_exponent=1.1)
    assert spec == plain and spec.fingerprint() == plain.fingerprint()
    assert type(spec.train_rows) is int and type(spec.vocab_sizes[0]) is int and type(spec.zipf_exponent) is float
    assert SyntheticCTRSpec(vocab_sizes=[30, 20]).vocab_sizes == (30, 20)


def test_make_synthetic_ctr_cache_files_must_be_a_bool(tmp_path):
    with pytest.raises(ValueError, match="Invalid cache_files: 'no'; expected True or False"):
        make_synthetic_ctr(SMALL, root=tmp_path, cache_files="no")


def test_cache_is_reused_not_regenerated(tmp_path, monkeypatch):
    import accel.datasets.ctr as ctr

    make_synthetic_ctr(SMALL, root=tmp_path)
    monkeypatch.setattr(ctr, "_generate", lambda spec: pytest.fail("regenerated a cached set"))
    again = make_synthetic_ctr(SMALL, root=tmp_path)
    assert len(again.train) == SMALL.train_rows
