"""Tables in the docs come from the results committed beside them: every page of the repository matches what its
sources generate, and the generator reads, pivots and refuses as it says."""

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from encsteal.cli import app
from encsteal.errors import ConfigError
from encsteal.experiments.doc_tables import pages, regenerate, update

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["run", "task", "TA", "SA", "R", "R_std", "SA_over_TA", "G", "cka", "queries", "cost", "steal_seconds", "case",
          "surrogate.size"]


def test_every_table_in_the_docs_is_what_its_source_generates():
    found = pages(ROOT)
    assert ROOT / "README.md" in found and any("docs" in path.parts for path in found)
    stale = update(found, write=False)
    assert not stale, f"tables differ from their sources in {[str(p) for p in stale]}: run `encsteal tables`"


def _write_results(folder: Path) -> None:
    lines = []
    for run, case, size, sa in (("l2__size=1%", "l2", "1%", 0.84), ("l2__size=5%", "l2", "5%", 0.87),
                                ("mse__size=1%", "mse", "1%", 0.83), ("mse__size=5%", "mse", "5%", 0.88)):
        for task, ta, r in (("fashion-mnist", 0.89, 0.84), ("digits", 0.98, 0.97)):
            lines.append({"run": run, "task": task, "TA": ta, "SA": sa, "R": r, "R_std": 0.004, "SA_over_TA": sa / ta,
                          "G": (sa - r) / (ta - r), "cka": 0.9, "queries": 600 if size == "1%" else 3000, "cost": "",
                          "steal_seconds": 450.0, "case": case, "surrogate.size": size})
    with (folder / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(lines)


PIVOT = """# Budgets

<!-- table
source: results.csv
where: {task: fashion-mnist}
rows: case
order: [mse, l2]
labels: {l2: ℓ2 (StolenEncoder)}
bold: [G 5 %]
columns:
  - [loss, case]
  - [G 1 %, G, {surrogate.size: 1%}]
  - [G 5 %, G, {surrogate.size: 5%}]
  - [stealing (min), steal_minutes, {surrogate.size: 5%}]
-->
stale
<!-- end table -->

Text after the table stays.
"""


def test_a_pivot_puts_one_line_per_case_and_a_column_per_budget(tmp_path):
    _write_results(tmp_path)
    text = regenerate(PIVOT, tmp_path)
    assert "| loss | G 1 % | G 5 % | stealing (min) |\n|---|---:|---:|---:|\n" in text
    assert "| mse | -0.20 | **0.80** | 7.5 |\n| ℓ2 (StolenEncoder) | 0.00 | 0.60 | 7.5 |\n<!-- end table -->" in text
    assert text.endswith("Text after the table stays.\n") and regenerate(text, tmp_path) == text


def test_a_marker_in_a_code_block_is_an_example(tmp_path):
    page = "```markdown\n<!-- table\nsource: missing.csv\n-->\n| a |\n<!-- end table -->\n```\n"
    assert regenerate(page, tmp_path) == page


def test_a_plain_table_keeps_the_source_order_and_marks_a_weak_gain(tmp_path):
    _write_results(tmp_path)
    page = ("<!-- table\nsource: results.csv\nwhere: {case: l2}\ncolumns: [[run, run], [task, task], [R, R_spread], "
            "[G, G]]\n-->\n<!-- end table -->\n")
    body = regenerate(page, tmp_path).splitlines()[7:-1]
    assert body[0] == "| l2__size=1% | fashion-mnist | 84.00 ± 0.4 | 0.00 |"
    assert body[1] == "| l2__size=1% | digits | 97.00 ± 0.4 | -13.00 ⚠ |"  # TA − R = 1 point: G means nothing
    assert len(body) == 4


def test_a_run_results_json_gives_one_line_per_task(tmp_path):
    results = {"name": "demo", "queries": 3000, "steal_seconds": 120.0,
               "downstream": {"fashion-mnist": {"TA": 0.87, "SA": 0.86, "R": 0.84, "R_std": 0.004, "SA_over_TA": 0.988,
                                                "gain_captured": 0.67, "gain_meaningful": True, "fidelity": None}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    page = "<!-- table\nsource: results.json\ncolumns: [[downstream, task], [SA/TA, SA_over_TA], [G, G]]\n-->\n<!-- end table -->"
    assert "| fashion-mnist | 0.988 | 0.67 |" in regenerate(page, tmp_path)


@pytest.mark.parametrize("spec, message", [
    ("source: results.csv\ncolumns: [[x, nonsense]]", "no column 'nonsense'"),
    ("source: results.csv\ncolumns: [[G, G]]\nrows: case", "4 values in the rows of results.csv"),
    ("source: missing.csv\ncolumns: [[G, G]]", "no results file"),
    ("source: results.csv\ncolums: [[G, G]]", "not a valid spec"),
    ("source: results.csv\nlayout: paper", "names the sweep file"),
])
def test_a_bad_marker_is_one_clear_error_with_its_page_and_line(tmp_path, spec, message):
    _write_results(tmp_path)
    with pytest.raises(ConfigError, match=message) as caught:
        regenerate(f"intro\n\n<!-- table\n{spec}\n-->\n<!-- end table -->\n", tmp_path, "page.md")
    assert "page.md:3" in str(caught.value)


def test_the_command_checks_then_rewrites(tmp_path):
    _write_results(tmp_path)
    page = tmp_path / "page.md"
    page.write_text(PIVOT)
    runner = CliRunner()
    checked = runner.invoke(app, ["tables", str(page), "--check"])
    assert checked.exit_code == 1 and "differs from its sources" in checked.output and "stale" in page.read_text()
    assert runner.invoke(app, ["tables", str(page)]).exit_code == 0 and "stale" not in page.read_text()
    assert runner.invoke(app, ["tables", str(page), "--check"]).exit_code == 0
