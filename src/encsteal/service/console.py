"""The provider's console (`GET /admin`): accounts, usage, spending, coverage, flags and their history, with
plots, as one HTML page rendered on the server (inline SVG, no script, nothing fetched from elsewhere).

The page is behind the admin token (`encsteal serve` prints it, or reads ENCSTEAL_ADMIN_TOKEN): a browser signs
in once at /admin/login, which sets an HttpOnly cookie; scripts send `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class ConsoleAccount:
    name: str
    used: int
    quota: int | None
    requests: int
    spent: str
    price: str
    disabled: bool
    coverage: float | None
    flagged: bool
    flagged_at: float | None
    figures: dict[str, dict[str, float | None]]
    history: list[dict]
    """Rows of defense_events, oldest first (slot, created, images, queries, coverage, flagged, ...)."""


def _e(value) -> str:
    return html.escape(str(value))


def _when(seconds: float | None) -> str:
    return "–" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, x_label: str, y_label: str,
               marks: dict[str, tuple[float, float]] | None = None, width: int = 640, height: int = 260) -> str:
    """An SVG line chart: one polyline per series, a ring where `marks` says (the point an account was flagged)."""
    points = [p for line in series.values() for p in line]
    left, right, top, bottom = 56, 150, 28, 40
    if not points:
        return f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}"><text x="10" y="20">' \
               f'{_e(title)}: no data yet</text></svg>'
    x_max = max(p[0] for p in points) or 1.0
    y_max = max(p[1] for p in points) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (width - left - right) * x / x_max, height - bottom - (height - top - bottom) * y / y_max)

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}" class="chart">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{_e(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
             f'<text x="{(left + width - right) / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
             f'{_e(x_label)}</text>',
             f'<text x="14" y="{(top + height - bottom) / 2}" font-size="11" text-anchor="middle" '
             f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{_e(y_label)}</text>']
    for fraction in (0.0, 0.5, 1.0):
        _, y = at(0, fraction * y_max)
        parts.append(f'<text x="{left - 6}" y="{y + 4}" font-size="10" text-anchor="end">{fraction * y_max:.3g}</text>')
        x, _ = at(fraction * x_max, 0)
        parts.append(f'<text x="{x}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">'
                     f'{fraction * x_max:.4g}</text>')
    for index, (name, line) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        coordinates = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(*p) for p in line))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coordinates}">'
                     f'<title>{_e(name)}</title></polyline>')
        label_y = top + 14 * index + 8
        parts.append(f'<rect x="{width - right + 10}" y="{label_y - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{width - right + 24}" y="{label_y + 1}" font-size="11" class="legend">{_e(name)}</text>')
        if marks and name in marks:
            x, y = at(*marks[name])
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="none" stroke="{color}" stroke-width="2">'
                         f'<title>{_e(name)} flagged</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _cumulative(history: list[dict], slot: str, key: str) -> list[tuple[float, float]]:
    """(images so far, figure) per request of one slot."""
    out, images = [], 0
    for row in history:
        if row["slot"] != slot:
            continue
        images += row["images"]
        if row.get(key) is not None:
            out.append((float(images), float(row[key])))
    return out


def _usage(history: list[dict]) -> list[tuple[float, float]]:
    """(minutes since the first request, images so far), counted on one slot (every slot sees every request)."""
    slot, start = history[0]["slot"], history[0]["created"]
    out, images = [], 0
    for row in history:
        if row["slot"] == slot:
            images += row["images"]
            out.append(((row["created"] - start) / 60.0, float(images)))
    return out


def _first_slot(history: list[dict], key: str) -> str | None:
    return next((row["slot"] for row in history if row.get(key) is not None), None)


def render(accounts: list[ConsoleAccount], *, model: str, defenses: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = []
    for account in accounts:
        status = "disabled" if account.disabled else ("flagged" if account.flagged else "active")
        rows.append(
            f'<tr class="account" data-account="{_e(account.name)}"><td>{_e(account.name)}</td><td>{account.used}</td>'
            f'<td>{"∞" if account.quota is None else account.quota}</td><td>{account.requests}</td>'
            f'<td>{_e(account.price)}</td><td>{_e(account.spent)}</td><td>{_number(account.coverage)}</td>'
            f'<td class="{status}">{status}</td><td>{_when(account.flagged_at)}</td></tr>')
    coverage_series, marks, flag_rows = {}, {}, []
    for account in accounts:
        slot = _first_slot(account.history, "coverage")  # the first defense that measures it, as in the table
        if slot is None:
            continue
        coverage_series[account.name] = _cumulative(account.history, slot, "coverage")
        images, coverage = 0, 0.0
        for row in account.history:
            if row["slot"] == slot:
                images, coverage = images + row["images"], row["coverage"]
            if row.get("flagged") and account.name not in marks:
                marks[account.name] = (float(images), float(coverage))
                flag_rows.append(f"<tr><td>{_e(account.name)}</td><td>{_when(row['created'])}</td><td>{_e(row['slot'])}"
                                 f"</td><td>{images}</td><td>{_number(coverage)}</td>"
                                 f"<td>{_number(row.get('prada_w'), 3)}</td></tr>")
    work_series = {a.name: _cumulative(a.history, _first_slot(a.history, "hashes_per_image") or "", "hashes_per_image")
                   for a in accounts if _first_slot(a.history, "hashes_per_image")}
    noise_series = {a.name: _cumulative(a.history, _first_slot(a.history, "sigma") or "", "sigma")
                    for a in accounts if _first_slot(a.history, "sigma")}
    usage_series = {a.name: _usage(a.history) for a in accounts if a.history}
    charts = [line_chart(coverage_series, title="coverage of the embedding space", x_label="images answered",
                         y_label="coverage (%)", marks=marks)]
    if noise_series:
        charts.append(line_chart(noise_series, title="B4B noise σ (× RMS)", x_label="images answered", y_label="σ"))
    if work_series:
        charts.append(line_chart(work_series, title="proof-of-work price", x_label="images answered",
                                 y_label="hashes per image"))
    if usage_series:
        charts.append(line_chart(usage_series, title="usage", x_label="minutes since the account's first request",
                                 y_label="images answered"))
    flags = ("<table id=\"flags\"><tr><th>account</th><th>flagged at</th><th>by</th><th>images then</th>"
             "<th>coverage (%)</th><th>PRADA W</th></tr>" + "".join(flag_rows) + "</table>") if flag_rows \
        else '<p id="flags">No account flagged.</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>encsteal console</title>
<style>body{{font-family:sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:0.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
.flagged{{color:#b00;font-weight:bold}} .disabled{{color:#888}} .chart{{margin:0.5em 1em 1em 0}}</style></head>
<body><h1>encsteal console</h1>
<p>Model <code>{_e(model)}</code>; defenses: {_e(defenses)}; {len(accounts)} accounts; {_when(now)}.</p>
<h2>Accounts</h2>
<table id="accounts"><tr><th>account</th><th>images</th><th>quota</th><th>requests</th><th>price</th><th>spent</th>
<th>coverage (%)</th><th>status</th><th>flagged at</th></tr>{"".join(rows)}</table>
<h2>Flags</h2>{flags}
<h2>History</h2><div>{"".join(charts)}</div>
</body></html>"""


def login_page(error: str | None = None) -> str:
    message = f'<p class="error">{_e(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>encsteal console: sign in</title></head>
<body><h1>encsteal console</h1>{message}
<form method="post" action="/admin/login"><label>Admin token <input type="password" name="token" id="token"
autocomplete="off"></label> <button type="submit" id="sign-in">Sign in</button></form></body></html>"""
