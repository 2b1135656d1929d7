"""accel.book: profiles, start-up, generators, the results file, tables, links, the explorer."""

import json

import numpy as np
import pytest
import torch

from accel.book import MeanStd, Table, links, paper_vs_ours, resolve_profile, start


def test_resolve_profile(monkeypatch):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    assert resolve_profile("smoke") == "smoke"
    assert resolve_profile("CPU") == "cpu"
    assert resolve_profile("auto") == "cpu"  # on CUDA too: the paper's full recipes only when asked for
    monkeypatch.setenv("ACCEL_PROFILE", "smoke")
    assert resolve_profile("paper") == "smoke"  # the environment overrides


@pytest.mark.parametrize("bad", ["fast", "", "tpu"])
def test_unknown_profile_names_the_allowed_ones(monkeypatch, bad):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    if bad == "":
        monkeypatch.setenv("ACCEL_PROFILE", "")  # empty env var: ignored, the argument decides
        assert resolve_profile("smoke") == "smoke"
        return
    with pytest.raises(ValueError, match=r"Invalid profile: '.*'; allowed: 'auto', 'smoke', 'cpu', 'gpu', 'paper'"):
        resolve_profile(bad)
    monkeypatch.setenv("ACCEL_PROFILE", bad)
    with pytest.raises(ValueError, match="ACCEL_PROFILE"):
        resolve_profile("smoke")


def test_start_prints_one_line_and_leaves_global_rng_alone(monkeypatch, capsys):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    book = start("smoke", 3, style=False)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "profile smoke" in out[0] and "torch" in out[0] and "accel" in out[0]
    a = torch.rand(3, generator=book.generator("x"))
    assert torch.equal(a, torch.rand(3, generator=start("smoke", 3, quiet=True, style=False).generator("x")))
    assert not torch.equal(a, torch.rand(3, generator=book.generator("y")))
    assert book.rng("x").random() == start("smoke", 3, quiet=True, style=False).rng("x").random()
    assert book.seed_for("x") != start("smoke", 4, quiet=True, style=False).seed_for("x")
    assert torch.equal(torch_state, torch.get_rng_state())
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(np_state, np.random.get_state()))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="Invalid seed"):
        start("smoke", seed, quiet=True, style=False)


def test_results_file(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    path = tmp_path / "sub" / "r.json"
    book = start("smoke", 0, notebook="nb", results_path=path, quiet=True, style=False)
    book.results.metric("acc", np.float32(0.5), abs=0.01, unit="fraction")
    book.results.table("t", paper_vs_ours("T", [("full", {"acc": (95.6, MeanStd.of([0.9, 0.8, 0.7]))})]))
    book.results.claim("holds", True, "because")
    book.results.key_result("headline", "0.5", "0.6")
    data = json.loads(path.read_text())
    for key in ("notebook", "profile", "device", "versions", "git_commit", "seed", "wall_time_s", "metrics",
                "tables", "claims", "key_results"):
        assert key in data
    assert data["profile"] == "smoke" and data["notebook"] == "nb" and data["seed"] == 0
    assert data["metrics"]["acc"] == {"value": 0.5, "abs": 0.01, "rel": None, "unit": "fraction"}
    assert data["tables"]["t"]["columns"] == ["setting", "acc · paper", "acc · this run"]
    assert data["tables"]["t"]["rows"][0][2] == {"mean": pytest.approx(0.8), "std": pytest.approx(0.1), "n": 3}
    assert data["claims"]["holds"]["passed"] is True
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp files left behind
    with pytest.raises(ValueError, match="Invalid abs tolerance"):
        book.results.metric("x", 1.0, abs=-1)


def test_results_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    monkeypatch.setenv("ACCEL_RESULTS_PATH", str(tmp_path / "r.json"))
    start("smoke", 0, quiet=True, style=False).results.metric("x", 1.0)
    assert (tmp_path / "r.json").exists()


def test_tables_render():
    table = paper_vs_ours("Table 1", [("InfoBatch", {"acc": (95.6, MeanStd(95.1, 0.2, 3)), "saved": (0.4, None)})],
                          note="n = 3 seeds")
    text = table.to_text()
    assert "acc · paper" in text and "95.10 ± 0.20" in text and "—" in text and "n = 3 seeds" in text
    assert "<table" in table._repr_html_()
    assert "1,000" in Table("t", ["n"], [[1000]]).to_text()
    with pytest.raises(ValueError):
        MeanStd.of([])
    assert MeanStd.of([2.0]).std == 0.0


def test_links_follow_pyproject(tmp_path):
    url = links.repository_url()
    assert url.startswith("https://github.com/")
    assert links.colab_badge("00_x.ipynb").endswith(f"{url.removeprefix('https://github.com/')}/blob/main/notebooks/00_x.ipynb)")
    assert links.install_line() == f'pip install -q "accel-book[book] @ git+{url}"'
    with pytest.raises(ValueError, match="Invalid repository URL"):
        links.colab_url("x.ipynb", "https://example.org/x")


def test_committed_notebooks_point_at_the_repository():
    """Badges and install lines derive from pyproject's URL (python -m accel.book.links rewrites them)."""
    for path in sorted(links.ROOT.joinpath("notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert links.colab_url(path.name) in text, f"{path.name}: badge does not match pyproject's Repository"
        assert links.install_line().replace('"', '\\"') in text, f"{path.name}: Colab install line out of date"


def test_rewrite_notebook_moves_the_links(tmp_path):
    source = links.ROOT / "notebooks" / "00_where_time_goes.ipynb"
    copy = tmp_path / source.name
    copy.write_text(source.read_text())
    assert links.rewrite_notebook(copy, "https://github.com/someone/fork")
    text = copy.read_text()
    assert "github/someone/fork/blob/main/notebooks/00_where_time_goes.ipynb" in text
    assert "git+https://github.com/someone/fork" in text
    assert not links.rewrite_notebook(copy, "https://github.com/someone/fork")


def test_explorer_answers_and_runs():
    pytest.importorskip("ipywidgets")
    from accel.book import explorer

    calls = []
    box = explorer({"a": [1, 2, 3], "b": [0.5, 1.0]}, lambda a, b: {"sum": a + b},
                   run=lambda a, b: calls.append((a, b)) or {"live": a * b}, show_static=False)
    assert "accel-explorer" in box._dom_classes
    sliders = [c for c in box.children if hasattr(c, "options")]
    readout = next(c for c in box.children if "accel-explorer-readout" in c._dom_classes)
    assert "3" in readout.value  # middle of each grid: 2 + 1.0
    sliders[0].value = 3
    assert "4" in readout.value
    button = next(c for c in box.children if getattr(c, "description", "") == "run live")
    button.click()
    assert calls == [(3, 1.0)]
    with pytest.raises(ValueError, match=r"Invalid initial\['a'\]"):
        explorer({"a": [1]}, lambda a: {}, initial={"a": 5})


def test_a_rerun_that_dies_early_leaves_the_previous_results_file(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    path = tmp_path / "r.json"
    start("smoke", 0, results_path=path, quiet=True, style=False).results.metric("acc", 0.9)
    previous = path.read_text()
    rerun = start("smoke", 0, results_path=path, quiet=True, style=False)  # then the kernel dies
    assert path.read_text() == previous
    rerun.results.metric("acc", 0.8)  # the new run's first result replaces it
    assert json.loads(path.read_text())["metrics"]["acc"]["value"] == 0.8


@pytest.mark.parametrize("bad", [
    lambda r: r.table("t", Table("T", ["path"], [[__import__("pathlib").Path("/tmp")]])),
    lambda r: r.table("t", Table("T", ["values"], [[np.arange(3)]])),
    lambda r: r.key_result("headline", np.arange(3), "paper"),
    lambda r: r.key_result("headline", "this run", 0.5),
    lambda r: r.metric("m", np.arange(3)),
    lambda r: r.claim("c", "yes"),
])
def test_a_value_that_is_not_json_is_rejected_where_it_is_added(tmp_path, monkeypatch, bad):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    results = start("smoke", 0, results_path=tmp_path / "r.json", quiet=True, style=False).results
    with pytest.raises(TypeError, match="Invalid"):
        bad(results)
    results.metric("later", 1.0)  # every later save still works
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["later"]["value"] == 1.0


def test_a_claim_can_be_recorded_as_not_evaluated(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    results = start("smoke", 0, results_path=tmp_path / "r.json", quiet=True, style=False).results
    assert results.claim("c", None, "no setting qualified", compare=False) is None
    assert json.loads((tmp_path / "r.json").read_text())["claims"]["c"] == {
        "passed": None, "detail": "no setting qualified", "compare": False}


def test_numpy_integer_seed_is_accepted():
    assert start("smoke", np.int64(3), quiet=True, style=False).seed == 3


def test_device_that_this_build_cannot_use_is_a_clear_error(monkeypatch):
    from accel.book import session

    monkeypatch.setenv("ACCEL_DEVICE", "nonsense")
    with pytest.raises(ValueError, match="Invalid environment variable ACCEL_DEVICE: 'nonsense'"):
        session.pick_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("ACCEL_DEVICE", "cuda")
        with pytest.raises(ValueError, match="ACCEL_DEVICE: 'cuda'; this torch build .* sees no CUDA device"):
            session.pick_device()
    monkeypatch.setenv("ACCEL_DEVICE", "cpu")
    assert session.pick_device() == torch.device("cpu")


def test_verdicts_print_each_claim_with_its_mark(monkeypatch):
    monkeypatch.delenv("ACCEL_PROFILE", raising=False)
    results = start("smoke", 0, quiet=True, style=False).results
    results.claim("a", True, show=False), results.claim("b", False, show=False)
    results.claim("c", None, "not run", show=False)
    assert results.verdicts("a", "b", "c") == "✓ a\n✗ b\n– c"
    with pytest.raises(KeyError, match="no claim recorded under"):
        results.verdicts("d")


def test_git_commit_ignores_recorded_outputs_but_not_code_or_this_notebook(tmp_path, monkeypatch):
    import subprocess

    from accel.book import results as results_module

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    for name in ("accel/book/results.py", "notebooks/00_a.ipynb", "notebooks/01_b.ipynb", "data/results/00_a.cpu.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    monkeypatch.setattr(results_module, "__file__", str(tmp_path / "accel" / "book" / "results.py"))
    assert not results_module.git_commit("01_b").endswith("-dirty")
    (tmp_path / "notebooks" / "00_a.ipynb").write_text("1")  # another chapter's outputs, rewritten
    (tmp_path / "data" / "results" / "00_a.cpu.json").write_text("1")
    assert not results_module.git_commit("01_b").endswith("-dirty")
    assert results_module.git_commit("00_a").endswith("-dirty")  # this chapter's own notebook differs
    (tmp_path / "accel" / "book" / "results.py").write_text("1")  # code
    assert results_module.git_commit("01_b").endswith("-dirty")
