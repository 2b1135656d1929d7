"""Chapter 03's experiment functions (accel.experiments.cowclip) on a tiny synthetic set."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from accel.datasets.ctr import SyntheticCTRSpec
from accel.experiments import cowclip as chapter

TINY = replace(
    chapter.config("smoke"),
    data=SyntheticCTRSpec(vocab_sizes=(300, 60, 20), train_rows=4000, test_rows=2000, linear_scale=0.6),
    base_batch=32, multipliers=(4, 16), hf_multipliers=(16,), mlp_dims=(8,), epochs=1, workers=0,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_profiles_exist_and_validate():
    for profile in ("smoke", "cpu", "paper"):
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
