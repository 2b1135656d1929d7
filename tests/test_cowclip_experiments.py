"""Chapter 03's experiment functions (accel.experiments.cowclip) on a tiny synthetic set."""

import hashlib
import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _serve import closed_port_url, serve  # tests/_serve.py

from accel.datasets.cache import ChecksumError
from accel.datasets.criteo import CRITEO_URL, MalformedLinesWarning
from accel.datasets.ctr import SyntheticCTRSpec
from accel.experiments import cowclip as chapter
from accel.experiments import replay


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

TINY = replace(
    chapter.config("smoke"),
    data=SyntheticCTRSpec(vocab_sizes=(300, 60, 20), train_rows=4000, test_rows=2000, linear_scale=0.6),
    base_batch=32, multipliers=(4, 16), hf_multipliers=(16,), mlp_dims=(8,), epochs=1, workers=0,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_profiles_exist_and_validate():
    for profile in ("smoke", "cpu", "gpu", "paper"):
        cfg = chapter.config(profile)
        assert cfg.base_batch * max(cfg.multipliers) <= (cfg.data.train_rows if cfg.dataset == "synthetic" else 1e9)
    assert max(chapter.config("cpu").multipliers) == 128  # the 128x range
    with pytest.raises(ValueError, match="profile"):
        chapter.config("huge")
    with pytest.raises(ValueError, match="rule"):
        chapter.Arm("x", rule="cubic")
    with pytest.raises(ValueError, match="data"):
        chapter.Arm("x", data="imaginary")


def test_rules_scale_as_documented():
    cfg = TINY
    k = 16
    hp = {rule: chapter.hyperparameters(cfg, chapter.Arm("x", rule=rule, multiplier=k)) for rule in chapter.RULES}
    assert hp["none"]["lr"] == cfg.base_lr and hp["none"]["embed_lr"] == cfg.base_embed_lr
    assert hp["sqrt"]["lr"] == pytest.approx(cfg.base_lr * 4) and hp["sqrt"]["embed_lr"] == pytest.approx(
        cfg.base_embed_lr * 4
    )
    assert hp["linear"]["embed_lr"] == pytest.approx(cfg.base_embed_lr * 16)
    assert hp["cowclip"]["lr"] == pytest.approx(cfg.base_lr * 4) and hp["cowclip"]["embed_lr"] == cfg.base_embed_lr
    assert all(h["l2"] == pytest.approx(cfg.base_l2 * k) for h in hp.values())
    assert [h["clip"] for h in hp.values()] == [False, False, False, True]
    assert chapter.hyperparameters(cfg, chapter.Arm("x", multiplier=k, scale_l2=False))["l2"] == cfg.base_l2
    assert chapter.hyperparameters(cfg, chapter.Arm("x", multiplier=k, clip=False))["clip"] is False


def test_absent_rows_choice():
    assert chapter.absent_rows({"l2": 1e-3, "r": 1.0}) == "skip"
    assert chapter.absent_rows({"l2": 1e-2, "r": 0.001}) == "clip"


def test_train_is_deterministic_and_records_binding():
    arm = chapter.Arm("cc", multiplier=1)
    a = chapter.train(TINY, arm, seed=3)
    b = chapter.train(TINY, arm, seed=3)
    c = chapter.train(TINY, arm, seed=4)
    assert a.auc == b.auc and a.auc_per_epoch == b.auc_per_epoch
    assert a.auc != c.auc
    assert 0.5 < a.auc < 1 and math.isfinite(a.logloss)
    assert a.steps == a.steps_per_epoch == 4000 // 32
    assert a.clip_fraction is not None and 0 <= a.clip_fraction <= 1
    assert sum(a.bucket_clipped) <= sum(a.bucket_touched) and sum(a.bucket_touched) > 0
    assert a.clip_fraction == pytest.approx(sum(a.bucket_clipped) / sum(a.bucket_touched))
    plain = chapter.train(TINY, chapter.Arm("none", rule="none"), seed=3)
    assert plain.clip_fraction is None and sum(plain.bucket_touched) == 0


def test_step_matched_runs_many_epochs():
    run = chapter.train(TINY, chapter.Arm("s", multiplier=16, steps=20), seed=0)
    assert run.steps == 20 and run.steps_per_epoch == 4000 // 512
    assert len(run.auc_per_epoch) == math.ceil(20 / run.steps_per_epoch)


def test_run_arms_caches_and_shares_runs():
    cache = {}
    arms = [chapter.Arm("a", rule="none"), chapter.Arm("b", rule="sqrt", multiplier=4)]
    first = chapter.run_arms(TINY, arms, (0,), show_progress=False, cache=cache)
    assert len(cache) == 2
    again = chapter.run_arms(TINY, [chapter.Arm("renamed", rule="none")], (0,), show_progress=False, cache=cache)
    assert len(cache) == 2 and again["renamed"][0].auc == first["a"][0].auc


def test_worker_processes_give_the_same_numbers():
    arms = [chapter.Arm("a", rule="sqrt", multiplier=16), chapter.Arm("b", rule="cowclip", multiplier=16)]
    here = chapter.run_arms(TINY, arms, (0,), show_progress=False)
    pooled = chapter.run_arms(replace(TINY, workers=2), arms, (0,), show_progress=False)
    assert {k: v[0].auc for k, v in here.items()} == {k: v[0].auc for k, v in pooled.items()}


def test_updates_per_epoch_follow_the_argument():
    data = chapter.load_data(TINY)
    counts, updates = chapter.updates_per_epoch(data, [32, 512], seed=0)
    np.testing.assert_array_equal(counts, np.concatenate(chapter.id_counts(data.train.ids, data.field_dims)))
    sub_counts, sub_updates = chapter.updates_per_epoch(data, [32], seed=0, max_rows=1000)
    assert sub_counts.sum() == 1000 * data.num_fields and np.all(sub_updates[32] <= sub_counts)
    frequent, rare = counts >= 500, (counts > 0) & (counts <= 2)
    # frequent IDs: about one update per step, so ~16x fewer at 16x the batch
    assert updates[32][frequent].mean() / updates[512][frequent].mean() > 8
    # rare IDs: about one update per occurrence at either batch size (the larger batch drops a longer partial batch
    # at the end of the epoch, and two occurrences may share a batch)
    assert updates[512][rare].mean() / updates[32][rare].mean() > 0.75
    assert np.all(updates[32] <= counts)


def test_id_frequency_and_buckets():
    data = chapter.load_data(TINY)
    freq = chapter.id_frequency(data)
    assert sum(freq["bucket_id_share"]) == pytest.approx(1.0)
    assert sum(freq["bucket_row_share"]) == pytest.approx(1.0)
    buckets = chapter.frequency_bucket_of_rows(data)
    assert len(buckets) == sum(data.field_dims) and int(buckets.max()) < len(chapter.FREQUENCY_BUCKETS)
    assert len(chapter.bucket_labels()) == len(chapter.FREQUENCY_BUCKETS)


def test_tables_and_summaries():
    runs = chapter.run_arms(TINY, chapter.table1_arms(TINY, multipliers=(4,)), (0, 1), show_progress=False)
    rows = chapter.scaling_table(runs)
    assert [r["arm"] for r in rows] == ["base", "none ×4", "sqrt ×4", "linear ×4"]
    assert rows[0]["gap"] == 0.0
    gap, _ = chapter.paired_difference(runs["sqrt ×4"], runs["base"])
    assert gap == pytest.approx(np.mean([a.auc - b.auc for a, b in zip(runs["sqrt ×4"], runs["base"])]))
    assert chapter.summarize([1.0]) == (1.0, 0.0)
    table = chapter.hparams_table(TINY)
    assert len(table) == 3 * len(chapter.RULES)
    record = chapter.run_record(runs["base"][0])
    assert "model" not in record and record["auc"] == runs["base"][0].auc


def test_binding_by_bucket_pools_seeds():
    run = chapter.Run("x", 0, {}, 0.7, 0.5, [], 1, 1, 1.0, 0.0, 0.1, [10, 10, 0, 0], [1, 0, 0, 0])
    other = replace(run, seed=1, bucket_touched=[10, 30, 0, 0], bucket_clipped=[3, 0, 0, 0])
    rates = chapter.binding_by_bucket({"x": [run, other]})["x"]
    assert rates[0] == pytest.approx(0.2) and rates[1] == 0.0 and math.isnan(rates[2])


def test_bayes_and_live_run():
    limit = chapter.bayes(TINY)
    assert 0.5 < limit["auc"] < 1
    readout = chapter.live_run(replace(TINY, live_epochs=1), multiplier=4)
    assert 0 < readout["AUC (live)"] < 1 and readout["steps"] == 4000 // 128


def test_readme_usage_trains_a_model():
    """The README's three lines, on a DeepFM from accel.models.ctr."""
    import torch
    import torch.nn.functional as F

    from accel.cowclip import CowClip
    from accel.models.ctr import DeepFM

    generator = torch.Generator().manual_seed(0)
    model = DeepFM([50, 20, 5], mlp_dims=(8,), generator=generator)
    ids = torch.stack([torch.randint(0, d, (256,), generator=generator) for d in (50, 20, 5)], dim=1)
    labels = (ids[:, 0] < 10).float()
    opt = CowClip(model, model.embedding, batch_size=256, warmup_steps=5, embed_lr=1e-2, base_lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.binary_cross_entropy_with_logits(model(ids), labels)
        losses.append(loss.item())
        loss.backward(); opt.step(ids=ids); opt.zero_grad()  # noqa: E702
    assert losses[-1] < 0.8 * losses[0]


def test_runs_record_curves_and_row_norms():
    run = chapter.train(TINY, chapter.Arm("cc", multiplier=4), seed=0)
    assert len(run.curve_points) == len(run.auc_per_epoch)
    samples, steps, seconds, quality = run.curve_points[-1]
    assert steps == run.steps and samples == run.steps * 128 and seconds > 0 and quality == run.auc_per_epoch[-1]
    assert len(run.norm_init) == len(run.norm_end) == len(chapter.FREQUENCY_BUCKETS)
    assert all(n > 0 for n in run.norm_init)


def test_l2_mult_and_run_key_normalise_arms():
    cfg = TINY
    assert chapter.hyperparameters(cfg, chapter.Arm("x", multiplier=4, l2_mult=0.0))["l2"] == 0
    same = [chapter.Arm("a", multiplier=4), chapter.Arm("b", multiplier=4, clip=True, model=cfg.model, r=cfg.r)]
    assert chapter.run_key(cfg, same[0], 1) == chapter.run_key(cfg, same[1], 1)
    assert chapter.run_key(cfg, same[0], 1) != chapter.run_key(cfg, chapter.Arm("c", multiplier=4, clip=False), 1)


def test_seeded_shifts_every_seed_list():
    cfg = chapter.seeded(TINY, 5)
    assert cfg.seeds == tuple(5 + s for s in TINY.seeds)
    assert cfg.table1_seeds == tuple(5 + s for s in TINY.table1_seeds)
    assert cfg.step_matched_seeds == tuple(5 + s for s in TINY.step_matched_seeds)


def test_bucket_norms_and_gap_and_rule_curve():
    import torch

    weight = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 0.0]])
    buckets = torch.tensor([0, 0, 3, 3])
    assert chapter.bucket_norms(weight, buckets) == pytest.approx([3.0, 0.0, 0.0, 5.0])

    def runs(*aucs):
        return [chapter.Run("x", seed, {"batch_size": 8}, a, 0.0, [a], 1, 1, 1.0, 0.1, None)
                for seed, a in enumerate(aucs)]

    table = {"base": runs(0.7, 0.8), "sqrt ×4": runs(0.6, 0.8), "sqrt ×16": runs(0.5, 0.5)}
    mean, std, n = chapter.gap(table["sqrt ×4"], table["base"])
    assert (mean, n) == (pytest.approx(-0.05), 2) and std == pytest.approx(np.std([-0.1, 0.0], ddof=1))
    ks, means, _ = chapter.rule_curve(table, "sqrt")
    assert ks == [1, 4, 16] and means == pytest.approx([0.75, 0.7, 0.5])


def test_paper_speedup_and_clip_cost(tmp_path):
    ps = chapter.paper_speedup()
    assert ps["speedup"] == pytest.approx(768 / 9) and 1.4 < ps["step_cost_ratio"] < 1.6
    assert chapter.clip_cost(tmp_path / "missing.json") is None
    arms = {"baseline": {"ms_step": 100.0, "ms_optimizer": 10.0}, "cowclip": {"ms_step": 104.0, "ms_optimizer": 14.0}}
    record = {"runs": [{"batch_size": 16, "rows": 10, "threads": 2,
                        "results": [{"mode": "dense", "arms": arms, "pair_ratio_median": 1.04}]}]}
    (tmp_path / "b.json").write_text(json.dumps(record))
    (cost,) = chapter.clip_cost(tmp_path / "b.json")
    assert cost["mode"] == "dense" and cost["ratio"] == 1.04 and cost["ms_opt_clip"] - cost["ms_opt"] == 4.0


def test_explorer_index_and_nearest():
    cfg = TINY
    runs = chapter.run_arms(cfg, chapter.cowclip_arms(cfg), cfg.seeds, show_progress=False)
    trained = chapter.explorer_index(cfg, [runs], {})
    assert (16, "cowclip", cfg.r, cfg.zeta) in trained
    name, value = chapter.nearest(trained, 8, "cowclip", 1.0, 1e-5)
    arm, seeds = name.rsplit(" (", 1)
    assert arm in runs and seeds == f"{chapter.seed_label(cfg.seeds)})" and 0 < value < 1


def test_display_helpers():
    assert chapter.plural(1, "seed") == "1 seed" and chapter.plural(3, "epoch") == "3 epochs"
    assert chapter.zeta_label(1e-5) == "1e-05" and chapter.zeta_label(1e-2) == "1e-02"
    assert chapter.seed_label([0]) == "seed 0" and chapter.seed_label((1, 0)) == "seeds 0–1"
    assert chapter.seed_label(range(3)) == "seeds 0–2" and chapter.seed_label([0, 2, 5]) == "seeds 0, 2, 5"
    runs = {name: [chapter.Run(name, 0, {}, auc, 0.0, [], 1, 1, 1.0, 0.0, None)]
            for name, auc in (("none ×8", 0.5), ("sqrt ×8", 0.6), ("linear ×8", 0.65))}
    assert chapter.strongest_rule(runs, 8) == ("linear", 0.65)


# --- the gpu profile, Criteo's download and its fallback, the time budget and replay -------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
CRITEO_FIXTURE = "criteo_mini.tar.gz"  # 300 lines in the real archive's layout: 263 train / 30 test rows once parsed


def _gpu_on_fixture(url: str, **overrides):
    """The gpu profile's code path (DeepFM, paper recipe, Criteo from a URL) shrunk to the mini archive: batches 32,
    64 and 128 over 263 training rows (8, 4 and 2 steps an epoch), one seed, 3 step-matched steps."""
    shrunk = dict(criteo_url=url, criteo_rows=None, base_batch=32, multipliers=(2, 4), hf_multipliers=(4,),
                  hf_min_count=2, mlp_dims=(8,), step_matched_steps=3, sweep=((0.1, 1e-5),), other_models=("dcn",),
                  eval_batch=1024)  # fmt: skip
    return chapter.config("gpu", **{**shrunk, **overrides})


@pytest.fixture
def criteo_env(tmp_path, monkeypatch):
    """A fresh cache folder, no local Criteo copy, no loaded Criteo in this process."""
    monkeypatch.setenv("ACCEL_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(chapter.CRITEO_PATH_ENV, raising=False)
    chapter._cached_criteo.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedLinesWarning)  # the fixture's 7 malformed lines, on purpose
        yield tmp_path / "cache"
    chapter._cached_criteo.cache_clear()


def test_gpu_profile_is_the_paper_recipe_on_downloaded_criteo():
    gpu, paper = chapter.config("gpu"), chapter.config("paper")
    assert gpu.dataset == paper.dataset == "criteo" and gpu.criteo_url == paper.criteo_url == CRITEO_URL
    assert (gpu.model, gpu.mlp_dims, gpu.embed_dim, gpu.base_batch) == ("deepfm", (400, 400, 400), 10, 1024)
    assert (gpu.base_lr, gpu.base_embed_lr, gpu.base_l2) == (paper.base_lr, paper.base_embed_lr, paper.base_l2)
    assert max(gpu.multipliers) == 128 and gpu.workers == 0 and paper.criteo_rows is None
    largest = gpu.base_batch * max(gpu.multipliers)
    assert largest * 20 <= 0.9 * gpu.criteo_rows  # 20+ steps an epoch at the largest batch on the training split
    assert largest * 10 <= gpu.data.train_rows  # and on the synthetic stand-in
    assert gpu.step_matched_steps > gpu.epochs * (0.9 * gpu.criteo_rows // largest)  # step-matched: more steps


def test_gpu_code_path_on_the_criteo_fixture(criteo_env, capsys):
    """Every part of the gpu profile on CPU, through a local HTTP server: download (trusted on first use), the
    probe, the overview, every run_arms call of the chapter (one or a few steps each)."""
    with serve(FIXTURES) as base:
        cfg = _gpu_on_fixture(f"{base}/{CRITEO_FIXTURE}")
        resolved, note = chapter.data_source(cfg)
    record = criteo_env / f"{CRITEO_FIXTURE}.sha256"
    assert resolved == cfg and "Criteo Kaggle, all labelled lines" in note and "263 training and 30 test rows" in note
    assert f"first download: sha256 {_sha(FIXTURES / CRITEO_FIXTURE)} recorded in {record}" in note
    assert f"first download: sha256 {_sha(FIXTURES / CRITEO_FIXTURE)}" in capsys.readouterr().out  # said as it happens
    # the server is gone: everything below reads the archive checked against the record
    estimate = chapter.cost_model(cfg)(cfg)
    assert set(estimate.parts) == {"A1 Table 1", "A2 recipe", "A3 steps vs epochs", "A4 models", "B4 sweep"}
    assert all(seconds > 0 for seconds in estimate.parts.values()) and "batch 32" in estimate.basis
    view = chapter.overview(cfg, seed=0)
    assert (view.name, view.train_rows, view.test_rows, view.num_fields, view.limits) == ("criteo", 263, 30, 26, None)
    assert list(view.updates) == [32, 64, 128] and len(view.curves) == 3
    cache = {}
    for part, desc, arms, seeds in chapter.run_plan(cfg):
        runs = chapter.run_arms(cfg, arms, seeds, desc=desc, show_progress=False, cache=cache)
        assert list(runs) == [arm.name for arm in arms], desc
        for name, arm_runs in runs.items():
            assert all(0 < r.auc < 1 and r.steps >= 1 for r in arm_runs), (part, name)
    assert "noise" not in chapter.step_variants(cfg) and chapter.regime_groups(cfg) == []
    assert max(r.steps for r in cache.values()) == 8  # the base batch's epoch; ×4 gets 2 steps an epoch


@pytest.mark.parametrize("failure", ["404", "closed port"])
def test_no_criteo_falls_back_to_the_twin_with_a_note(criteo_env, failure):
    if failure == "closed port":
        cfg = _gpu_on_fixture(closed_port_url(CRITEO_FIXTURE))
        resolved, note = chapter.data_source(cfg)
    else:
        with serve(FIXTURES) as base:
            cfg = _gpu_on_fixture(f"{base}/no-such-archive.tar.gz")
            resolved, note = chapter.data_source(cfg)
    assert resolved == replace(cfg, dataset="synthetic") and resolved.data == chapter.CRITEO_TWIN
    assert note.startswith("Criteo could not be downloaded (Could not download ")
    assert ("HTTP 404" in note) == (failure == "404")
    assert "ACCEL_CRITEO_PATH" in note and "synthetic twin" in note and f"download {cfg.criteo_url} where" in note
    assert not list(criteo_env.glob("*.tar.gz*")) and not list(criteo_env.glob(".part-*"))  # nothing half-written


def test_without_network_the_gpu_profile_falls_back_and_says_how_to_get_criteo(criteo_env, monkeypatch):
    import urllib.error

    from accel.datasets import criteo

    def offline(url, timeout):
        assert url == CRITEO_URL  # the gpu profile goes to Criteo's public archive
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(criteo.urllib.request, "urlopen", offline)
    resolved, note = chapter.data_source(chapter.config("gpu"))
    assert resolved == replace(chapter.config("gpu"), dataset="synthetic")
    assert "Temporary failure in name resolution" in note and f"download {CRITEO_URL} (4,576,820,670 bytes)" in note
    assert "set the environment variable ACCEL_CRITEO_PATH to that file" in note
    assert not list(criteo_env.iterdir())  # no partial archive, no record


def test_a_changed_criteo_archive_stops_the_chapter(criteo_env):
    with serve(FIXTURES) as base:
        cfg = _gpu_on_fixture(f"{base}/{CRITEO_FIXTURE}")
        chapter.data_source(cfg)
    archive = criteo_env / CRITEO_FIXTURE
    archive.write_bytes(archive.read_bytes() + b"\0")
    chapter._cached_criteo.cache_clear()  # a later run
    with pytest.raises(ChecksumError, match=f"{archive} has sha256 .*recorded sha256 .*left untouched"):
        chapter.data_source(cfg)  # not a fallback: a changed file is an error


def test_a_local_copy_named_by_the_environment(criteo_env, monkeypatch):
    monkeypatch.setenv(chapter.CRITEO_PATH_ENV, str(criteo_env / "missing.tar.gz"))
    cfg = _gpu_on_fixture(closed_port_url(CRITEO_FIXTURE))  # never contacted
    with pytest.raises(FileNotFoundError, match="Invalid environment variable ACCEL_CRITEO_PATH: .*missing.tar.gz"):
        chapter.data_source(cfg)
    monkeypatch.setenv(chapter.CRITEO_PATH_ENV, str(FIXTURES / CRITEO_FIXTURE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the copy has no known checksum: its hash goes to the manifest
        resolved, note = chapter.data_source(cfg)
    assert resolved == cfg and f"read from {FIXTURES / CRITEO_FIXTURE} ($ACCEL_CRITEO_PATH)" in note


def _fake_probe(monkeypatch, step_s=lambda batch: 0.01 + 1e-5 * batch, row_s=1e-6):
    """Replace the timed parts of the probe with fixed numbers (no test asserts on measured time)."""
    monkeypatch.setattr(chapter, "_time_steps",
                        lambda cfg, data, multiplier, device, generator, steps: step_s(cfg.base_batch * multiplier))
    monkeypatch.setattr(chapter, "_time_eval", lambda cfg, data, device: row_s)


def test_cost_model_scales_with_seeds_epochs_and_steps(monkeypatch):
    _fake_probe(monkeypatch)
    cfg = replace(TINY, seeds=(0,), table1_seeds=(0,), step_matched_seeds=(0,), epochs=1, step_matched_steps=20)
    estimate = chapter.cost_model(cfg)
    one = estimate(cfg)
    assert set(one.parts) == {"A1 Table 1", "A2 recipe", "A3 steps vs epochs", "A4 models", "B4 sweep"}
    assert "a step at batch 32 10.3 ms, at 512 15 ms" in one.basis
    steps = 4000 // 32  # the base batch's epoch, at 10 ms + 10 µs a sample, plus one evaluation of 2,000 rows
    assert estimate(cfg) == one  # the same config, the same numbers
    a1 = one.parts["A1 Table 1"]
    expected_base = steps * (0.01 + 1e-5 * 32) + 2000 * 1e-6
    assert a1 > expected_base and math.isclose(estimate(replace(cfg, epochs=2)).parts["A1 Table 1"], 2 * a1)
    three = estimate(replace(cfg, seeds=(0, 1, 2)))
    assert math.isclose(three.parts["A4 models"], 3 * one.parts["A4 models"])
    assert three.parts["A1 Table 1"] == a1  # Table 1 has its own seeds
    longer = estimate(replace(cfg, step_matched_steps=40)).parts["A3 steps vs epochs"]
    assert longer > one.parts["A3 steps vs epochs"]
    assert math.isclose(estimate(replace(cfg, workers=2)).seconds, one.seconds / 2)


def test_book_fit_trims_the_chapter_to_a_budget_and_says_so(tmp_path, monkeypatch, capsys):
    from accel.book import start

    _fake_probe(monkeypatch, step_s=lambda batch: 0.5 + 1e-3 * batch)  # a slow device: minutes per section
    book = start("smoke", 0, notebook="03_cowclip", results_path=tmp_path / "r.json", style=False, quiet=True)
    try:
        cfg = replace(TINY, seeds=(0, 1, 2), table1_seeds=(0, 1), epochs=3)
        full = chapter.cost_model(cfg)(cfg).seconds
        fitted = book.fit(cfg, chapter.cost_model, trims=chapter.TRIMS, budget_minutes=full / 60 / 4)
        out = capsys.readouterr().out
        assert "Estimated run time on this device, profile smoke" in out
        assert "trimmed seeds 3 (0, 1, 2) → 1 (0)" in out and fitted.seeds == (0,)
        assert fitted.table1_seeds == (0,) and fitted.epochs < 3 and fitted.multipliers == cfg.multipliers
        plan = json.loads((tmp_path / "r.json").read_text())["plan"]
        assert plan["trimmed"][0] == "seeds 3 (0, 1, 2) → 1 (0)" and plan["estimate_s"] <= full / 4 + 1e-6
    finally:
        replay.begin()


def test_recorded_results_round_trip_through_json():
    """What the notebook reads from each replayable call survives the results file (replay.encode / decode)."""

    def round_trip(value):
        return replay.decode(json.loads(json.dumps(replay.encode(value))))

    cfg = TINY
    runs = chapter.run_arms.__wrapped__(cfg, chapter.cowclip_arms(cfg), (0,), show_progress=False)
    back = round_trip(runs)
    assert list(back) == list(runs)
    for name in runs:
        assert back[name] == runs[name]  # every field: AUCs, curves (tuples), hparams, bucket counts, seconds
    assert chapter.binding_rows(back) == chapter.binding_rows(runs)
    assert chapter.ledger_curves(back[name]) == chapter.ledger_curves(runs[name])
    view = chapter.overview.__wrapped__(cfg, seed=0)
    again = round_trip(view)
    for f in ("name", "train_rows", "test_rows", "field_dims", "limits", "bucket_id_share", "bucket_row_share",
              "update_centres", "updates"):
        assert getattr(again, f) == getattr(view, f), f
    assert list(again.curves) == list(view.curves)
    for label, (ranks, counts) in view.curves.items():
        np.testing.assert_array_equal(again.curves[label][0], ranks)
        np.testing.assert_array_equal(again.curves[label][1], counts)
    assert round_trip(chapter.data_source.__wrapped__(chapter.config("smoke"))) == (chapter.config("smoke"), None)
    assert len(json.dumps(replay.encode(view))) < 20_000  # compact: log-spaced ranks, not every ID


def test_overview_curves_are_log_spaced_samples_of_the_counts():
    data = chapter.load_data(TINY)
    view = chapter.overview.__wrapped__(TINY, seed=0)
    pooled = np.sort(np.concatenate(chapter.id_counts(data.train.ids, data.field_dims)))[::-1]
    seen = pooled[pooled > 0]
    ranks, counts = view.curves["all fields"]
    assert ranks[0] == 1 and ranks[-1] == len(seen) and np.all(np.diff(ranks) > 0) and len(ranks) <= 400
    np.testing.assert_array_equal(counts, seen[ranks - 1])
    assert view.limits["signal"] == chapter.bayes(TINY) and set(view.limits) == {"signal", "hf", "noise"}


def test_run_plan_is_what_the_notebook_runs():
    """The cost model counts the runs of run_plan; the notebook must train exactly those: its run_arms calls take
    their arms from the same helpers, in the same order."""
    import re

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "03_cowclip.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    calls = re.findall(r"chapter\.run_arms\(cfg, chapter\.(\w+)\(cfg(?:, \"(\w+)\"|, clip=(\w+))?|"
                       r"for desc, arms, seeds in chapter\.(\w+)\(cfg\)", code)
    used = [(helper or loop, variant or clip) for helper, variant, clip, loop in calls]
    assert used == [("table1_arms", "signal"), ("table1_arms", "hf"), ("cowclip_arms", "True"),
                    ("cowclip_arms", "False"), ("plain_arms", ""), ("regime_groups", ""), ("step_matched_groups", ""),
                    ("model_arms", ""), ("sweep_arms", "")]  # fmt: skip
    cfg = chapter.config("smoke")
    expected = [chapter.table1_arms(cfg, "signal"), chapter.table1_arms(cfg, "hf", cfg.hf_multipliers),
                chapter.cowclip_arms(cfg, clip=True), chapter.cowclip_arms(cfg, clip=False), chapter.plain_arms(cfg),
                *(arms for _, arms, _ in chapter.regime_groups(cfg)),
                *(arms for _, arms, _ in chapter.step_matched_groups(cfg)),
                chapter.model_arms(cfg), chapter.sweep_arms(cfg)]  # fmt: skip
    assert [arms for _, _, arms, _ in chapter.run_plan(cfg)] == expected
