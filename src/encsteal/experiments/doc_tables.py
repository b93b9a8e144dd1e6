"""Tables in Markdown pages generated from the results committed beside them, so that figure and source cannot
drift: `encsteal tables` rewrites them, `encsteal tables --check` (and the test suite) says which differ.

A table is a block between a marker, an HTML comment whose body is a YAML mapping, and `<!-- end table -->`:

    <!-- table
    source: fmnist-bench-copy/results.csv     # a sweep's results.csv, or a run's results.json
    where: {run: [half-stem, imagenet-stem]}   # keep these rows only
    rows: run                                  # one line per run (without: one per row kept)
    columns:                                   # [header, column] or [header, column, {where}]
      - [copy, run]
      - [SA, SA, {task: fashion-mnist}]
      - [G, G, {task: fashion-mnist}]
      - ["G, 600 labels", G, {task: fashion-mnist-600}]  # a header with a comma is quoted
    -->
    | copy | SA | G | G, 600 labels |
    ...
    <!-- end table -->

Paths are relative to the page. Columns are read as encsteal.experiments.rows formats them (TA, SA, R and
R_spread as %, SA_over_TA, G with ⚠ where TA − R is too small, cosine, l2, cka, knn_agree, queries, cost,
steal_minutes, ...); any other column of the source is shown as it is. With `rows: KEY` a line is one value of
that column (in order of appearance, or `order: [...]`), and each column shows the one value that the rows of
that line matching its own `where` give: a pivot, e.g. one line per attack with a column per budget.
`labels` renames the values of the first column; `bold: [header, ...]` marks each such column's highest value.

`layout: sweep` is the sweep report's own table of the CSV, and `layout: paper` with `paper: SWEEP.yaml` its
table of the published figures beside ours: a committed report.md checks itself against its results.csv.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from encsteal.errors import ConfigError
from encsteal.experiments.rows import CELLS, cell, csv_row, task_row

BLOCK = re.compile(r"<!-- table\n(?P<spec>.*?)-->\n(?P<body>.*?)<!-- end table -->", re.DOTALL)
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
"""A marker inside a fenced code block is an example, not a table."""


class Column(BaseModel):
    model_config = ConfigDict(extra="forbid")
    header: str
    value: str
    where: dict[str, str] = {}


class TableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Path
    layout: Literal["columns", "sweep", "paper"] = "columns"
    paper: Path | None = None
    """layout paper: the sweep file whose `paper:` figures sit beside ours."""
    where: dict[str, str | list[str]] = {}
    rows: str | None = None
    order: list[str] | None = None
    labels: dict[str, str] = {}
    columns: list[Column] = []
    bold: list[str] = []

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_as_lists(cls, value):
        # [header, column] or [header, column, {where}] reads better in a page than a mapping per column
        columns = []
        for item in value:
            if isinstance(item, list) and not (len(item) == 2 or (len(item) == 3 and isinstance(item[2], dict))):
                raise ValueError(f"{item}: a column is [header, column] or [header, column, {{where}}]; a header with "
                                 "a comma needs quotes")
            columns.append(item if isinstance(item, dict) else
                           {"header": item[0], "value": item[1], "where": item[2] if len(item) == 3 else {}})
        return columns


def read_source(path: Path) -> list[dict]:
    """One row per line of a results.csv, or per downstream task of a results.json."""
    if not path.is_file():
        raise ConfigError(f"no results file {path}")
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return [csv_row(line) for line in csv.DictReader(handle)]
    if path.suffix == ".json":
        results = json.loads(path.read_text())
        return [{"run": results.get("name", ""), **task_row(results, task)} for task in results["downstream"]]
    raise ConfigError(f"{path}: a table's source is a results.csv or a results.json")


def _matches(row: dict, where: dict) -> bool:
    return all(str(row.get(key, "")) in (wanted if isinstance(wanted, list) else [wanted])
               for key, wanted in where.items())


def _bold_highest(lines: list[list[str]], index: int) -> None:
    def value(text: str) -> float | None:
        match = re.match(r"−?-?\d+(\.\d+)?", text)
        return float(match.group(0).replace("−", "-")) if match else None

    values = [value(line[index]) for line in lines]
    if any(v is not None for v in values):
        best = max(v for v in values if v is not None)
        for line, v in zip(lines, values):
            if v == best:
                line[index] = f"**{line[index]}**"


def _markdown(headers: list[str], numeric: list[bool], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "".join("---:|" if right else "---|" for right in numeric)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def render(spec: TableSpec, base: Path) -> str:
    """The table a marker's spec describes; paths relative to `base`, the page's folder."""
    rows = [row for row in read_source(base / spec.source) if _matches(row, spec.where)]
    if spec.layout == "sweep":
        from encsteal.experiments.sweep_report import records_table

        return records_table(rows)
    if spec.layout == "paper":
        from encsteal.experiments.sweep import read_spec
        from encsteal.experiments.sweep_report import paper_table

        if spec.paper is None:
            raise ConfigError("a table of layout paper names the sweep file with the published figures (paper:)")
        return paper_table(rows, read_spec(base / spec.paper).published())
    if not spec.columns:
        raise ConfigError("a table needs columns (or layout: sweep or paper)")
    known = set(rows[0]) | set(CELLS) if rows else set(CELLS)
    for column in spec.columns:
        if column.value not in known:
            raise ConfigError(f"column '{column.header}': {spec.source} has no column '{column.value}'")
    if spec.rows is None:
        groups = [[row] for row in rows]
    else:
        keys = spec.order or list(dict.fromkeys(str(row.get(spec.rows)) for row in rows))
        groups = [[row for row in rows if str(row.get(spec.rows)) == key] for key in keys]
    lines = []
    for group in groups:
        line = []
        for column in spec.columns:
            shown = {cell(row, column.value) for row in group if _matches(row, column.where)}
            if len(shown) != 1:
                raise ConfigError(f"column '{column.header}': {len(shown)} values in the rows of {spec.source} that "
                                  f"match where {column.where} for one line of the table; give `rows` and a `where` "
                                  "that pick one")
            line.append(shown.pop())
        lines.append(line)
    if lines and spec.labels:
        for line in lines:
            line[0] = spec.labels.get(line[0], line[0])
    headers = [column.header for column in spec.columns]
    for header in spec.bold:
        if header not in headers:
            raise ConfigError(f"bold: no column '{header}'")
        _bold_highest(lines, headers.index(header))
    return _markdown(headers, [column.value in CELLS for column in spec.columns], lines)


def _spec(text: str, where: str) -> TableSpec:
    try:
        return TableSpec.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{where}: the table's marker is not a valid spec ({exc})") from None


def regenerate(text: str, base: Path, where: str = "page") -> str:
    """The page with every table block rewritten from its source."""
    examples = [fence.span() for fence in FENCE.finditer(text)]

    def block(match: re.Match) -> str:
        if any(start <= match.start() < end for start, end in examples):
            return match.group(0)
        line = text.count("\n", 0, match.start()) + 1
        spec = _spec(match.group("spec"), f"{where}:{line}")
        try:
            table = render(spec, base)
        except ConfigError as exc:
            raise ConfigError(f"{where}:{line}: {exc}") from None
        return f"<!-- table\n{match.group('spec')}-->\n{table}\n<!-- end table -->"

    return BLOCK.sub(block, text)


def pages(root: Path) -> list[Path]:
    """The Markdown pages that may hold tables: README.md and everything under docs/."""
    return sorted([*root.glob("README.md"), *(root / "docs").rglob("*.md")])


def update(paths: list[Path], write: bool) -> list[Path]:
    """The pages whose tables differ from their sources; rewritten when `write`."""
    stale = []
    for path in paths:
        text = path.read_text()
        fresh = regenerate(text, path.parent, str(path))
        if fresh != text:
            stale.append(path)
            if write:
                path.write_text(fresh)
    return stale
