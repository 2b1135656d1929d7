"""Chapter 04's experiment code: the uniform-routing floor, the bf16 example, the optimizers, one short run."""

import math

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
    runs = chapter.run_arms(cfg, data, torch.device("cpu"), arms, (0,), desc="x", show_progress=False, cache=cache)
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
