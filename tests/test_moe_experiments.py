"""Chapter 04's experiment code: the uniform-routing floor, the bf16 example, the optimizers, one short run."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from accel.experiments import moe as chapter


@pytest.mark.parametrize("setting", sorted(chapter.PAPER_UNIFORM_FLOOR))
def test_uniform_floor_reproduces_the_papers_numbers(setting):
    tokens, factor = setting
    assert round(100 * chapter.uniform_drop_floor(tokens, 32, factor, 1), 2) == pytest.approx(
        chapter.PAPER_UNIFORM_FLOOR[setting], abs=0.01)


@pytest.mark.parametrize("experts, k, factor", [(8, 1, 1.0), (8, 2, 1.0), (4, 2, 0.75), (16, 3, 1.25)])
def test_uniform_floor_matches_monte_carlo(experts, k, factor):
    exact = chapter.uniform_drop_floor(256, experts, factor, k)
    simulated = chapter.simulated_uniform_drops(256, experts, factor, k, trials=3000, seed=1)
    assert simulated == pytest.approx(exact, abs=0.004, rel=0.05)


def test_uniform_floor_edge_cases():
    assert chapter.uniform_drop_floor(100, 2, 1.0, 2) == 0.0  # every token to both experts, capacity 100
    assert chapter.uniform_drop_floor(1024, 8, 4.0, 1) < 1e-12


def test_bf16_roundoff_example_is_the_papers():
    example = chapter.bf16_roundoff_example()
    assert example["logit 128.5 stored in bfloat16"] == 128.0
    assert example["top probability, float32"] == pytest.approx(0.1415, abs=1e-3)
    assert example["top probability, bfloat16 logits"] == pytest.approx(1 / 11, abs=1e-4)


def test_clipped_adam_caps_the_update_rms():
    weight = torch.nn.Parameter(torch.zeros(1000))
    optimizer = chapter.ClippedAdam([weight], lr=1.0, d=0.1)
    weight.grad = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    optimizer.step()  # Adam's first update is sign(g) (RMS 1); clipped to RMS 0.1
    assert weight.detach().pow(2).mean().sqrt().item() == pytest.approx(0.1, rel=1e-3)
    with pytest.raises(ValueError, match="Invalid d"):
        chapter.ClippedAdam([weight], d=0)


def test_optimizer_groups_give_the_router_its_own_rate():
    cfg = chapter.config("smoke")
    arm = chapter.Arm("x", router_lr_mult=10.0)
    model = chapter.make_model(cfg, arm, 0, torch.device("cpu"))
    optimizer = chapter.make_optimizer(model, arm, 1e-3)
    rest, router = optimizer.param_groups
    assert router["lr"] == pytest.approx(1e-2) and len(router["params"]) == len(model.moe_layers())
    with pytest.raises(ValueError, match="Invalid optimizer"):
        chapter.make_optimizer(model, chapter.Arm("x", optimizer="sgd"), 1e-3)


@pytest.fixture(scope="module")
def smoke():
    cfg = chapter.config("smoke", steps=12, eval_windows=8)
    return cfg, chapter.load_data(cfg)


def test_a_short_run_is_seeded_and_records_the_router(smoke):
    cfg, data = smoke
    a = chapter.train(cfg, chapter.Arm("recipe"), 0, data, torch.device("cpu"))
    b = chapter.train(cfg, chapter.Arm("same settings, other name"), 0, data, torch.device("cpu"))
    assert a.curve == b.curve and a.val_loss == b.val_loss and not a.diverged
    assert {"mean_logsumexp", "max_abs_logit", "entropy", "dropped"} <= set(a.curve[-1])
    assert 0 < a.val_loss < math.log(256) + 0.5


def test_divergence_is_detected_and_stops_the_run(smoke):
    cfg, data = smoke
    run = chapter.train(chapter.replace(cfg, diverge_loss=1.0), chapter.Arm("x"), 0, data, torch.device("cpu"))
    assert run.diverged and run.diverged_at == 0 and run.val_loss == math.inf


def test_run_cache_shares_runs_with_identical_settings(smoke):
    cfg, data = smoke
    cache = {}
    arms = [chapter.Arm("recipe"), chapter.Arm("8 experts", {"num_experts": cfg.num_experts})]
    runs = chapter.run_arms(cfg, data, torch.device("cpu"), arms, (0,), desc="x", show_progress=False, cache=cache,
                            keep_models=True)
    assert len(cache) == 1 and runs["recipe"][0].model is runs["8 experts"][0].model
    assert runs["8 experts"][0].arm == "8 experts"
    routing = chapter.routing_at(cfg, runs["recipe"][0].model, data, torch.device("cpu"), 1.0)
    assert 0 <= routing["dropped"] <= 1 and 0 <= routing["entropy"] <= math.log(cfg.num_experts) + 1e-6
    classes, shares = chapter.expert_by_byte_class(cfg, runs["recipe"][0].model, data, torch.device("cpu"))
    assert shares.shape == (len(classes), cfg.num_experts)
    assert torch.allclose(shares.sum(1)[shares.sum(1) > 0], torch.tensor(1.0))


def test_dense_baseline_widens_only_the_moe_positions():
    cfg = chapter.config("smoke")
    moe = chapter.make_model(cfg, chapter.recipe_arm(cfg), 0, torch.device("cpu"))
    dense = chapter.make_model(cfg, chapter.dense_arm(cfg), 0, torch.device("cpu"))
    ffns = dense.moe_layers()
    assert ffns and all(isinstance(f, chapter.WideFFN) for f in ffns)
    assert all(f.w_out.in_features == cfg.top_k * cfg.d_ff for f in ffns)
    # the other layers are the MoE model's, and the active parameters match up to the router (d_model x E per layer)
    assert dense.blocks[0].ffn.w_in.weight.shape == moe.blocks[0].ffn.w_in.weight.shape
    router = len(moe.moe_layers()) * cfg.d_model * cfg.num_experts
    assert dense.num_parameters(active_only=True) == moe.num_parameters(active_only=True) - router
    assert dense.num_parameters() == dense.num_parameters(active_only=True)
    assert float(dense.aux_loss()) == 0.0


def test_paired_difference_and_its_verdict():
    def runs(values):
        return [chapter.Run("a", s, [], v, None, 0.0) for s, v in enumerate(values)]

    d = chapter.paired_difference(runs([1.0, 2.0, 3.0]), runs([1.5, 2.5, 3.4]))
    assert d["diffs"] == pytest.approx([-0.5, -0.5, -0.4]) and d["verdict"] == "better"
    assert chapter.paired_difference(runs([1.0, 2.0, 3.0]), runs([0.5, 2.5, 3.0]))["verdict"] == "not resolved"
    one = chapter.paired_difference(runs([1.0]), runs([0.9]))
    assert one["verdict"] == "not resolved" and chapter.difference_text(one) == "+0.100 (n = 1)"


def test_runs_record_both_ends_of_the_logits_and_a_validation_curve(smoke):
    cfg, data = smoke
    cfg = chapter.replace(cfg, val_every=5)
    run = chapter.train(cfg, chapter.recipe_arm(cfg), 0, data, torch.device("cpu"))
    last = run.curve[-1]
    assert last["min_logit"] <= last["top_logit"] <= last["mean_logsumexp"] + 1e-5
    assert [p[1] for p in run.val_curve] == [5, 10, 12] and run.val_curve[-1][3] == run.val_loss
    assert run.val_curve[0][0] == 5 * cfg.batch_size * cfg.seq_len
    target = run.val_curve[-1][3] + 1e-9
    assert chapter.ledger_target([run]) >= target


def test_analysis_helpers_build_their_rows(smoke):
    cfg, data = smoke
    cfg = chapter.replace(cfg, steps=4, val_every=2)
    precision = chapter.run_arms(cfg, data, torch.device("cpu"), chapter.router_precision_arms(cfg), (0,), desc="x",
                                 show_progress=False)
    rows = chapter.precision_rows(precision)
    assert [r[0] for r in rows] == ["healthy", "provoked"] and all("(n = 1)" in r[3] for r in rows)
    cost = chapter.cost_summary({"a": precision["healthy | float32 router"]})
    assert cost["a"]["ms_per_step"][0] > 0 and cost["a"]["train_state_mb"] > 0
    bench = chapter.bench_rows()
    assert bench["rows"] and all(r["ratio"] > 0 for r in bench["rows"])
    answer = chapter.explorer_answer(cfg, [{"top-k": 2, "train CF": 1.25, "eval CF": 1.25, "val loss": 3.0,
                                            "dropped": 0.1}], [])
    readout = answer(num_experts=8, top_k=2, capacity_factor=1.25, z_loss_coef=1e-3)
    assert readout["its measured dropped share"] == "10.0%"


def test_reader_wording_helpers():
    import torch

    from accel.book.diagrams import moe as diagram
    from accel.experiments import moe as chapter

    assert chapter.plural(1, "seed") == "1 seed" and chapter.plural(3, "seed") == "3 seeds"
    story = diagram.dispatch_story()
    assert any("t1's second choice is dropped, pushed out by the first choice of t3" in line for line in story)
    rows = [["no norm before the router", "no z-loss", "0/1", None, 485.0, 486.6, -388.0],
            ["no norm before the router", "z-loss 1e-3", "0/1", None, 5.0, 4.42, -86.0]]
    text = chapter.stressor_reading_text(rows, 8)
    assert "outside the band" in text and "did not hold the final top logit inside the band" in text
    rows[1][6] = -3120.0
    assert "lowest logit -3,120)" in chapter.stressor_reading_text(rows, 8)
    assert chapter.number_text(-3120.0) == "-3,120" and chapter.number_text(9651.319) == "9,651.32"
    assert chapter.seed_sign_text({"diffs": [0.1, 0.2, 0.01]}, "the z-loss") == \
        "the z-loss is worse on every one of the 3 seeds"
    assert chapter.seed_sign_text({"diffs": [0.1, -0.2, 0.01]}, "x") == "x is worse on 2 of the 3 seeds and better on 1"
    assert chapter.seed_sign_text({"diffs": [-0.1]}, "x") == "x is better on the one seed"
    shares = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    assert "Expert 0 takes the largest share of 2 of the 3" in chapter.routing_by_class_text(["a", "b", "c"], shares)
    cfg = chapter.config("smoke")
    assert "Left out of this profile" in chapter.stressor_list_text(cfg)


def test_runs_come_back_without_models_unless_asked(smoke):
    cfg, data = smoke
    cfg = chapter.replace(cfg, steps=2)
    cache = {}
    runs = chapter.run_arms(cfg, data, torch.device("cpu"), [chapter.Arm("x")], (0,), desc="x", show_progress=False,
                            cache=cache)
    run = runs["x"][0]
    assert run.model is None and next(iter(cache.values())).model is not None  # the cache keeps it for reuse
    assert run.parameters > run.active_parameters > 0
    assert chapter.cost_summary(runs)["x"]["parameters"] == run.parameters


# --- the gpu profile, the cost model and the time budget ------------------------------------------------------------

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"


def test_gpu_config_runs_every_part_on_the_enwik8_fixture(tmp_path, monkeypatch):
    """The gpu profile's code path (enwik8 through the download path, its stressors with fp16, its capacity arms and
    expert counts, the cost model) at a few steps of a tiny model, on the fixture in enwik8's format."""
    monkeypatch.setenv("ACCEL_DATA_DIR", str(tmp_path))
    mini = FIXTURES / "enwik8_mini.zip"
    gpu = chapter.config("gpu")
    cfg = chapter.config("gpu", corpus_url=mini.as_uri(), corpus_sha256=hashlib.sha256(mini.read_bytes()).hexdigest(),
                         d_model=16, n_heads=2, d_ff=32, seq_len=16, batch_size=4, steps=1, warmup=1, log_every=1,
                         eval_windows=4, val_every=1, seeds=(0,), stressor_seeds=(0,))
    assert (cfg.stressors, cfg.capacity_arms, cfg.expert_counts) == (gpu.stressors, gpu.capacity_arms,
                                                                     gpu.expert_counts)
    assert "fp16" in cfg.stressors and cfg.corpus == "enwik8"
    device, cache = torch.device("cpu"), {}
    estimate = chapter.cost_model(cfg, device)(cfg)
    assert set(estimate.parts) == set(chapter.planned_work(cfg)) and "fp16 step" in estimate.basis
    data = chapter.load_data(cfg)
    assert data.name == "enwik8" and len(data.val) > cfg.seq_len
    stability = chapter.run_arms(cfg, data, device, chapter.stability_arms(), cfg.seeds, desc="s", cache=cache,
                                 show_progress=False)
    stressors = chapter.run_arms(cfg, data, device, chapter.stressor_arms(cfg), cfg.stressor_seeds, desc="s",
                                 cache=cache, show_progress=False)
    precision = chapter.run_arms(cfg, data, device, chapter.router_precision_arms(cfg), cfg.seeds, desc="s",
                                 cache=cache, show_progress=False)
    cap_rows = chapter.capacity_table(cfg, data, device, cache=cache, show_progress=False)
    balance = chapter.balance_study(cfg, data, device, cache=cache, show_progress=False)
    expert_rows = chapter.expert_count_table(cfg, data, device, cache=cache, show_progress=False)
    classes, shares = chapter.routing_by_class(cfg, data, device, cache=cache, show_progress=False)
    ledger = chapter.run_arms(cfg, data, device, [chapter.dense_arm(cfg), chapter.recipe_arm(cfg)], cfg.seeds,
                              desc="s", cache=cache, show_progress=False)
    trained = sum(len(w["runs"]) for w in chapter.planned_work(cfg).values())
    assert len(cache) == trained  # the plan the estimate prices is what the chapter trains
    assert len(stressors) == 2 * len(cfg.stressors) and len(stability) == 4 and len(precision) == 4
    assert len(cap_rows) == 2 * len(cfg.capacity_arms) and [r["experts"] for r in expert_rows] == [1, 4, 8, 16]
    assert len(balance["rows"]) == len(cfg.drop_factors) and shares.shape == (len(classes), cfg.num_experts)
    assert all(r.model is None for runs in (stability, stressors, precision, ledger) for rs in runs.values()
               for r in rs)
    fp16 = stressors["fp16 autocast + loss scaling | z-loss 1e-3"][0]
    assert fp16.curve and math.isfinite(fp16.curve[0]["loss"])
    assert chapter.cost_summary(ledger)[chapter.dense_arm(cfg).name]["parameters"] > 0


def test_gpu_profile_arithmetic_matches_its_comment():
    cfg = chapter.config("gpu")
    assert chapter.active_weights(cfg) == 3_477_504 and chapter.flops_per_token(cfg) == pytest.approx(22.4e6, 5e-3)
    work = chapter.planned_work(cfg)
    assert sum(len(w["runs"]) for w in work.values()) == 53
    minutes = sum(chapter.arithmetic_seconds(cfg).values()) / 60
    assert 10 <= minutes <= 15, minutes


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_active_weights_match_the_models_count(profile):
    cfg = chapter.config(profile)
    arms = [chapter.recipe_arm(cfg), chapter.dense_arm(cfg), chapter.capacity_arm(3, 2.0), chapter.capacity_arm(1, 1.0),
            chapter.Arm("16", {"num_experts": 16}), *chapter.stressor_arms(cfg)[::2]]
    for arm in arms:
        model = chapter.make_model(cfg, arm, 0, torch.device("cpu"))
        looked_up = sum(p.numel() for name, p in model.named_parameters()
                        if name.startswith("pos_emb") or "norm" in name)
        assert chapter.active_weights(cfg, arm) == model.num_parameters(active_only=True) - looked_up, arm.name


def test_estimate_scales_with_seeds_and_steps():
    cfg = chapter.config("cpu")

    def total(c, forward=0.0):
        return chapter.work_seconds(c, lambda arm: 1.0, forward)

    base = total(cfg)
    assert sum(total(chapter.replace(cfg, steps=2 * cfg.steps)).values()) == pytest.approx(2 * sum(base.values()))
    fewer = total(chapter.replace(cfg, seeds=cfg.seeds[:2]))
    assert fewer["Table 4 (stability)"] == pytest.approx(base["Table 4 (stability)"] * 2 / 3)
    assert fewer["stressors"] == base["stressors"]
    one = total(chapter.replace(cfg, stressor_seeds=cfg.stressor_seeds[:1]))
    assert one["stressors"] == pytest.approx(base["stressors"] / 3)
    # the "2× longer" stressor costs twice the steps of the others
    longer = [arm for arm, _ in chapter.planned_work(cfg)["stressors"]["runs"] if arm.steps_mult == 2.0]
    assert longer and base["stressors"] == pytest.approx(cfg.steps * (24 + len(longer)))
    # validation passes: priced per forward of batch_size windows
    passes = sum(w["passes"] for w in chapter.planned_work(cfg).values())
    with_eval = sum(total(cfg, forward=1.0).values()) - sum(base.values())
    assert with_eval == pytest.approx(passes * -(-cfg.eval_windows // cfg.batch_size))


def test_cost_model_prices_the_probe_and_book_fit_trims_to_the_budget(monkeypatch, tmp_path, capsys):
    from accel.book import start
    from accel.experiments import replay

    probed = []

    def fake_probe(cfg, arm, device, steps=3, warmup=2):
        probed.append(arm.name)
        return 0.02, 0.005  # seconds per step and per validation forward: no wall clock in this test

    monkeypatch.setattr(chapter, "probe_step", fake_probe)
    cfg = chapter.config("cpu")
    estimate = chapter.cost_model(cfg, torch.device("cpu"))
    assert probed == [chapter.recipe_arm(cfg).name]  # no half-precision arm in the cpu profile
    seconds = estimate(cfg).seconds
    plain = sum(chapter.work_seconds(cfg, lambda arm: 0.02 * chapter.flops_per_token(cfg, arm)
                                     / chapter.flops_per_token(cfg), 0.005).values())
    assert seconds == pytest.approx(plain)
    assert estimate(chapter.replace(cfg, steps=100)).seconds < seconds

    book = start("cpu", 0, notebook="04_st_moe", results_path=tmp_path / "r.json", style=False, quiet=True)
    try:
        budget = 0.4 * seconds / 60  # needs the stressors' seeds, the shared seeds and the steps trimmed
        fitted = book.fit(cfg, chapter.cost_model, torch.device("cpu"), trims=chapter.TRIMS, budget_minutes=budget)
    finally:
        replay.begin()
    out = capsys.readouterr().out
    assert "trimmed stressor_seeds 3 (0, 1, 2) → 1 (0)" in out and "seeds 3 (0, 1, 2) → 2 (0, 1)" in out
    assert fitted.stressor_seeds == (0,) and fitted.seeds == (0, 1) and fitted.steps < cfg.steps
    assert estimate(fitted).seconds <= 60 * budget


def test_recorded_results_round_trip(smoke):
    """What the notebook reads from each replayable computation survives the results file's encoding exactly, and a
    recorded run stays small."""
    from accel.experiments import replay

    cfg, data = smoke
    cfg = chapter.replace(cfg, steps=4, val_every=2, log_every=1)
    device, cache = torch.device("cpu"), {}
    values = {
        "runs": chapter.run_arms(cfg, data, device, chapter.stability_arms()[:2], (0,), desc="x", cache=cache,
                                 show_progress=False),
        "capacity": chapter.capacity_table(cfg, data, device, cache=cache, show_progress=False),
        "balance": chapter.balance_study(cfg, data, device, cache=cache, show_progress=False),
        "experts": chapter.expert_count_table(cfg, data, device, cache=cache, show_progress=False),
        "classes": chapter.routing_by_class(cfg, data, device, cache=cache, show_progress=False),
    }
    for name, value in values.items():
        encoded = replay.encode(value)
        back = replay.decode(json.loads(json.dumps(encoded)))
        assert replay.encode(back) == encoded, name  # NaN-safe equality of everything recorded
    runs = replay.decode(json.loads(json.dumps(replay.encode(values["runs"]))))
    run, original = runs["baseline (no z-loss)"][0], values["runs"]["baseline (no z-loss)"][0]
    assert isinstance(run, chapter.Run) and run.curve == original.curve and run.val_loss == original.val_loss
    assert chapter.stability_summary(runs) == chapter.stability_summary(values["runs"])
    classes, shares = replay.decode(json.loads(json.dumps(replay.encode(values["classes"]))))
    assert classes == values["classes"][0] and torch.equal(shares, values["classes"][1])
    assert isinstance(values["balance"]["runs"]["without balance loss"][0].model, type(None))
    # a cpu-profile run (21 logged points) records in a few kilobytes: the chapter's ~60 runs stay well under 1 MB
    point = {**run.curve[-1], "step": 190}
    cpu_run = chapter.replace(run, curve=[dict(point) for _ in range(21)], val_curve=[(25600, 25, 0.5, 3.1)] * 8)
    assert len(json.dumps(replay.encode(cpu_run))) < 8000
