"""Reports: a sweep's table, CSV and plots from its stored rows; a run's report table is well formed."""

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_tree
from encsteal.cli import app
from encsteal.config import ConfigError
from encsteal.experiments.report import results_table
from encsteal.experiments.sweep import ResultStore
from encsteal.experiments.sweep_report import _x_scale, default_axes, markdown_table, records, write_sweep_report
from encsteal.config import config_from_dict


def task_result(ta, sa, r):
    return {"TA": ta, "SA": sa, "R": r, "R_std": 0.01, "SA_over_TA": sa / ta, "gain_captured": (sa - r) / (ta - r),
            "gain_meaningful": True, "fidelity": {"cosine": 0.9, "l2": 1.0, "cka": 0.8, "knn_agree": 0.7}}


def stored_row(run_id, loss, size, sa):
    config = config_from_dict(tiny_tree(attack={"name": "stolenencoder", "arch": "small_cnn", "loss": loss},
                                        surrogate={"scenario": "different-distribution", "dataset": "natural-crops",
                                                   "size": size}))
    results = {"downstream": {"digits": task_result(0.9, sa, 0.5), "fashion-mnist": task_result(0.8, sa - 0.1, 0.6)},
               "queries": size, "cost": None, "pretrain_seconds": 720.0, "steal_seconds": 36.0}
    return {"id": run_id, "status": "done", "config": yaml.safe_dump(config.model_dump(mode="json")),
            "results": json.dumps(results), "error": None}


@pytest.fixture
def rows():
    grid = [(loss, size, sa) for loss, sa in (("l2", 0.8), ("mse", 0.7)) for size in (100, 1000) for _ in [0]]
    done = [stored_row(f"{loss}__size={size}", loss, size, sa + size / 1e4) for loss, size, sa in grid]
    return [*done, {"id": "broken", "status": "failed", "config": None, "results": None, "error": "out of memory"}]


def test_records_and_table_cover_every_run_and_task(rows):
    recs = records(rows)
    assert len(recs) == 8 and {r["task"] for r in recs} == {"digits", "fashion-mnist"}
    table = markdown_table(rows)
    assert table.count("| l2__size=100 |") == 2 and "| broken | failed: out of memory |" in table
    header, rule, *body = table.splitlines()
    assert all(line.count("|") == header.count("|") for line in [rule, *body])


def test_budget_curves_put_queries_on_x_and_one_line_per_loss(rows, tmp_path):
    keys = ["surrogate.size", "attack.loss"]
    assert default_axes(keys, records(rows)) == ("queries", "attack.loss")
    report = write_sweep_report(rows, tmp_path, title="budgets", grid_keys=keys)
    assert (tmp_path / "curves.png").stat().st_size > 0 and "one line per attack.loss" in report.read_text()
    with (tmp_path / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 8 and {row["attack.loss"] for row in table} == {"l2", "mse"}
    assert float(table[0]["SA"]) == pytest.approx(0.81)


def test_the_x_axis_is_logarithmic_over_decades_and_keeps_zero_query_runs(rows):
    recs = records(rows)  # 100 and 1,000 queries
    assert _x_scale(recs, "queries") == ("log", {})
    assert _x_scale(recs[:2], "queries") == ("linear", {})  # one budget only
    free = [{**recs[0], "queries": 0}, *recs]  # pre-training on the surrogate buys nothing
    assert _x_scale(free, "queries") == ("symlog", {"linthresh": 100})


def test_cases_crossed_with_budgets_give_one_line_per_case(rows, tmp_path):
    assert default_axes(["surrogate.size"], records(rows)) == ("queries", "case")
    report = write_sweep_report(rows, tmp_path, title="attacks", grid_keys=["surrogate.size"])
    assert "one line per case" in report.read_text()
    with (tmp_path / "results.csv").open() as handle:
        assert {row["case"] for row in csv.DictReader(handle)} == {"l2", "mse"}


def test_without_a_numeric_setting_the_report_draws_bars(rows, tmp_path):
    write_sweep_report(rows, tmp_path, title="cases", grid_keys=[])
    assert (tmp_path / "accuracy.png").exists() and not (tmp_path / "curves.png").exists()


def test_an_unknown_axis_is_one_clear_error(rows, tmp_path):
    with pytest.raises(ConfigError, match="attack.no_such_key"):
        write_sweep_report(rows, tmp_path, title="x", grid_keys=[], x="attack.no_such_key")


def test_report_command_rereads_the_store_and_says_when_there_is_nothing(rows, tmp_path):
    spec = tmp_path / "budgets.yaml"
    spec.write_text(yaml.safe_dump({"base": "demo", "runs_dir": str(tmp_path / "runs"),
                                    "grid": {"surrogate.size": [100, 1000], "attack.loss": ["l2", "mse"]}}))
    result = CliRunner().invoke(app, ["report", str(spec)])
    assert result.exit_code == 2 and "no results yet" in " ".join(result.output.split())
    store = ResultStore(tmp_path / "runs" / "results.sqlite")
    for row in rows:
        with store.db:
            store.db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, 1.0, 0.0)",
                             (row["id"], row["status"], row["config"], row["results"], row["error"]))
    result = CliRunner().invoke(app, ["report", str(spec), "--x", "attack.lam", "--out", str(tmp_path / "docs")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "docs" / "report.md").read_text()
    assert "against attack.lam, one line per attack.loss" in text and "the runs took 0.1 min in all" in text


def test_run_report_table_has_as_many_cells_as_columns():
    table = results_table({"downstream": {"digits": task_result(0.9, 0.85, 0.5)}})
    header, rule, row = table.splitlines()
    assert header.count("|") == rule.count("|") == row.count("|")


def test_published_figures_sit_beside_ours(rows, tmp_path):
    paper = {"l2__size=1000": {"digits": {"TA": 91.0, "SA": 79.0}}, "mse__size=100": {"gtsrb": {"SA": 70.0}}}
    text = write_sweep_report(rows, tmp_path, title="paper", grid_keys=[], paper=paper).read_text()
    assert "| l2__size=1000 | digits | 91.00 | 79.00 | digits | 90.00 | 90.00 |" in text
    assert "| mse__size=100 | gtsrb | – | 70.00 | digits | 90.00 | 71.00 |" in text  # a task we do not have


def test_published_hours_sit_beside_ours_in_a_compute_table(rows, tmp_path):
    paper_hours = {"l2__size=100": {"pretrain": 12.5, "steal": 0.125}}
    text = write_sweep_report(rows, tmp_path, title="compute", grid_keys=[], paper_hours=paper_hours).read_text()
    assert "| l2__size=100 | 0.200 | 0.010 | 20× | 12.50 | 0.12 | 100× |" in text
    assert "| mse__size=1000 | 0.200 | 0.010 | 20× | – | – | – |" in text
    assert "## Compute" not in write_sweep_report(rows, tmp_path, title="no hours", grid_keys=[]).read_text()
    with open(tmp_path / "results.csv") as handle:
        assert {row["pretrain_seconds"] for row in csv.DictReader(handle)} == {"720.0"}


def test_the_paper_table_says_whether_our_rows_move_as_the_papers_do(rows, tmp_path):
    # ours: SA grows with the budget and l2 beats mse; the published figures below rise in the same order
    order = ["mse__size=100", "mse__size=1000", "l2__size=100", "l2__size=1000"]
    same = {run: {"digits": {"SA": 60.0 + i}} for i, run in enumerate(order)}
    text = write_sweep_report(rows, tmp_path, title="trend", grid_keys=[], paper=same).read_text()
    assert "SA: over the 4 rows, our order agrees with the paper's by Kendall's τ = 1.00" in text
    reversed_ = {run: {"digits": {"SA": 60.0 - i}} for i, run in enumerate(order)}
    text = write_sweep_report(rows, tmp_path, title="trend", grid_keys=[], paper=reversed_).read_text()
    assert "Kendall's τ = -1.00" in text and "TA: over" not in text  # no published TA: no TA sentence


def test_gain_panels_keep_a_readable_range_and_count_what_falls_off_it():
    import matplotlib.pyplot as plt

    from encsteal.experiments.sweep_report import G_AXIS, _clipped_line

    fig, axis = plt.subplots()
    points = [(100, 0.5), (1000, -40.0), (3000, 2.0)]  # a collapsed copy at 1,000 queries; a supervised one at 3,000
    assert _clipped_line(axis, points, "barlow-halves", {"color": "C0", "marker": "o"}) == 2
    line = axis.get_lines()[0]
    assert list(line.get_ydata()) == [0.5, G_AXIS[0], G_AXIS[1]]
    assert [l.get_marker() for l in axis.get_lines()[1:]] == ["v", "^"]  # the edge points show which way
    plt.close(fig)


def test_gain_is_not_drawn_where_the_target_is_too_weak_for_it(rows, tmp_path, monkeypatch):
    import encsteal.experiments.sweep_report as sweep_report

    weak = [dict(row) for row in rows]
    for row in weak[:-1]:  # digits: TA − R under 2 points in every run
        results = json.loads(row["results"])
        results["downstream"]["digits"]["gain_meaningful"] = False
        row["results"] = json.dumps(results)
    drawn = []
    real_subplots = sweep_report.plt.subplots

    def subplots(*args, **kwargs):  # keep the axes to look at them
        fig, axes = real_subplots(*args, **kwargs)
        drawn.extend(axes.flatten())
        return fig, axes

    monkeypatch.setattr(sweep_report.plt, "subplots", subplots)
    write_sweep_report(weak, tmp_path, title="weak", grid_keys=["surrogate.size", "attack.loss"])
    panels = {axis.get_title(): axis for axis in drawn}
    assert len(panels["digits: captured gain G: not drawn, TA − R under 2 points"].get_lines()) == 1  # G = 1 only
    assert len(panels["fashion-mnist: captured gain G"].get_lines()) == 3  # l2, mse and G = 1


def seeded_rows():
    """Two runs of cases x grid (l2 and mse at 100 queries), three seeds each; digits SA 0.80, 0.82, 0.84 for l2."""
    return [stored_row(f"{loss}__size=100__seed={seed}", loss, 100, base + 0.02 * seed)
            for loss, base in (("l2", 0.8), ("mse", 0.7)) for seed in range(3)]


def test_interval_is_students_t_over_the_seeds():
    from scipy.stats import t

    from encsteal.experiments.sweep_report import interval, seed_group

    mean, half = interval([1.0, 2.0, 3.0])  # s = 1, n = 3
    assert mean == pytest.approx(2.0) and half == pytest.approx(t.ppf(0.975, 2) / 3 ** 0.5)
    assert half == pytest.approx(2.4841, abs=1e-4)
    assert interval([0.5]) == (0.5, None)
    assert seed_group("l2__size=100__seed=2") == "l2__size=100" and seed_group("seed=1") == "run"
    assert seed_group("seedless__size=3") == "seedless__size=3"


def test_a_seeded_sweep_reports_mean_and_interval_everywhere(tmp_path):
    from scipy.stats import t

    from encsteal.experiments.sweep_report import over_seeds

    rows = [*seeded_rows(), {"id": "mse__size=100__seed=3", "status": "failed", "config": None, "results": None,
                             "error": "out of memory"}]
    recs = {(r["run"], r["task"]): r for r in over_seeds(records(rows))}
    l2 = recs[("l2__size=100", "digits")]
    assert l2["seeds"] == 3 and l2["SA"] == pytest.approx(0.82)
    assert l2["SA_ci95"] == pytest.approx(t.ppf(0.975, 2) * 0.02 / 3 ** 0.5)
    assert l2["G"] == pytest.approx((0.82 - 0.5) / 0.4) and l2["TA_ci95"] == pytest.approx(0.0)
    report = write_sweep_report(rows, tmp_path, title="seeds", grid_keys=[], seeds=True).read_text()
    assert f"| l2__size=100 | digits | 3 | 90.00 ± 0.00 | 82.00 ± {100 * l2['SA_ci95']:.2f} |" in report
    assert "| mse__size=100__seed=3 | failed: out of memory |" in report and "95 % confidence interval" in report
    with (tmp_path / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and {"G", "G_ci95", "seeds", "SA_ci95"} <= set(table[0])  # 2 runs x 2 tasks
    row = next(r for r in table if (r["run"], r["task"]) == ("l2__size=100", "digits"))
    assert float(row["G_ci95"]) == pytest.approx(l2["G_ci95"]) and row["case"] == "l2" and row["seeds"] == "3"
    with (tmp_path / "results-per-seed.csv").open() as handle:
        per_seed = list(csv.DictReader(handle))
    assert len(per_seed) == 12 and {r["seed"] for r in per_seed} == {"0"}  # the stored configs all say seed 0
    assert (tmp_path / "accuracy.png").exists()  # one budget: bars, with error bars


def test_seeded_curves_draw_error_bars(tmp_path, monkeypatch):
    import encsteal.experiments.sweep_report as sweep_report

    rows = [stored_row(f"l2__size={size}__seed={seed}", "l2", size, 0.7 + 0.05 * seed + size / 1e4)
            for size in (100, 1000) for seed in range(2)]
    bars = []
    real = sweep_report.plt.Axes.errorbar

    def errorbar(self, x, y, yerr=None, **kwargs):
        bars.append(list(yerr))
        return real(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(sweep_report.plt.Axes, "errorbar", errorbar)
    write_sweep_report(rows, tmp_path, title="curves", grid_keys=["surrogate.size"], x="queries", seeds=True)
    assert (tmp_path / "curves.png").exists() and bars
    g_half = sweep_report.interval([(0.71 - 0.5) / 0.4, (0.76 - 0.5) / 0.4])[1]  # digits at 100 queries
    assert any(b[0] == pytest.approx(g_half) for b in bars)
