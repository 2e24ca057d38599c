"""The report's HTML: the page template and the table helpers (escaped, numbers
right-aligned)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

# ---------------------------------------------------------------------------------------------
# HTML

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Corpus report: {{ run }}</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       margin: 0; color: #1d1d1f; background: #fafafa; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 28px 60px; }
h1 { font-size: 26px; margin: 10px 0 4px; }
h2 { font-size: 20px; margin: 34px 0 8px; border-bottom: 2px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; margin: 0 0 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px;
        min-width: 140px; }
.card b { display: block; font-size: 21px; }
.card span { color: #666; font-size: 13px; }
figure { margin: 10px 0; background: #fff; border: 1px solid #ddd; border-radius: 8px;
         padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #555; font-size: 13px; padding: 4px 6px 0; }
table { border-collapse: collapse; background: #fff; font-size: 13.5px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fbfbfb; }
tr.gap td { background: #fdecea; }
.warn { background: #fff4e5; border: 1px solid #f0b37e; padding: 8px 12px; border-radius: 6px; }
#plot-error { display: none; }
details summary { cursor: pointer; color: #2c5f8a; margin: 6px 0; }
code { background: #f0f0f0; padding: 0 3px; border-radius: 3px; }
</style>
</head>
<body>
<main>
<h1>Corpus report: {{ run }}</h1>
<p class="sub">{{ subtitle }}</p>
<p id="plot-error" class="warn">Some plots failed to load in this browser; the PNG copies are in
<code>report/</code> next to this file.</p>
<div class="cards">
{% for label, value in cards %}<div class="card"><b>{{ value }}</b><span>{{ label }}</span></div>
{% endfor %}</div>

<h2 id="coverage">Coverage per taxonomy node</h2>
<p>{{ coverage_note }}</p>
{{ figure("coverage") }}
<details{% if node_rows|length <= 60 %} open{% endif %}><summary>Table: {{ node_rows|length }}
nodes (documents and tokens include every descendant; red rows have no documents)</summary>
<table>
<tr><th>node</th><th>name</th><th>documents</th><th>tokens</th><th>duplicates removed</th>
<th>dup. rate</th><th>contaminated removed</th><th>contam. rate</th><th>other rejections</th>
{% if has_planned %}<th>units planned</th>{% endif %}</tr>
{% for r in node_rows %}<tr{% if r.gap %} class="gap"{% endif %}>
<td style="padding-left: {{ 8 + 16 * r.depth }}px">{{ r.id }}</td><td>{{ r.name }}</td>
<td class="n">{{ r.documents }}</td><td class="n">{{ r.tokens }}</td>
<td class="n">{{ r.duplicates }}</td><td class="n">{{ r.dup_rate }}</td>
<td class="n">{{ r.contaminated }}</td><td class="n">{{ r.contam_rate }}</td>
<td class="n">{{ r.rejected_other }}</td>
{% if has_planned %}<td class="n">{{ r.planned }}</td>{% endif %}</tr>
{% endfor %}</table></details>
{% if coverage_table %}<h3>Planned coverage (walker)</h3>{{ coverage_table }}{% endif %}

<h2 id="lengths">Length and token distributions</h2>
{{ figure("tokens") }}
{{ length_table }}

<h2 id="rejections">Rejection reasons</h2>
{{ figure("rejections") }}
{{ rejection_table }}

<h2 id="duplicates">Duplicate and contamination rates per node</h2>
<p>{{ rates_note }}</p>
{{ figure("duplicates") }}
{% for title, table in diversity_tables %}<details><summary>{{ title }}</summary>{{ table }}
</details>{% endfor %}

<h2 id="openers">Repeated openers</h2>
<p>{{ openers_note }}</p>
{{ figure("openers") }}
{{ opener_html }}

{% if quality_html %}<h2 id="quality">Quality gates and diversity</h2>
<p>{{ quality_note }}</p>
{% if has_map %}{{ figure("map") }}{% endif %}
{{ quality_html }}{% endif %}

<h2 id="cost">Cost and time per stage</h2>
{% if has_stages %}{{ figure("stages") }}{% endif %}
{{ cost_html }}
</main>
<script>
(function () {
  var imgs = document.querySelectorAll("img.plot"), done = 0, bad = 0;
  function check(img) {
    img.setAttribute("data-natural-width", img.naturalWidth);
    img.setAttribute("data-natural-height", img.naturalHeight);
    done += 1;
    if (!img.naturalWidth) {
      bad += 1;
      document.getElementById("plot-error").style.display = "block";
    }
    document.body.setAttribute("data-plots-checked", String(done));
    document.body.setAttribute("data-plots-broken", String(bad));
  }
  imgs.forEach(function (img) {
    if (img.complete) { check(img); return; }
    img.addEventListener("load", function () { check(img); });
    img.addEventListener("error", function () { check(img); });
  });
})();
</script>
</body>
</html>
"""


def _fmt_int(n: Any) -> str:
    return "" if n is None else f"{int(n):,}"


def _fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _fmt_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, Mapping):
        return "; ".join(f"{k}: {_fmt_value(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(_fmt_value(x) for x in v)
    return str(v)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An escaped HTML table; numbers right-aligned."""
    from markupsafe import escape

    out = ["<table><tr>", *(f"<th>{escape(h)}</th>" for h in headers), "</tr>"]
    for row in rows:
        out.append("<tr>")
        for v in row:
            numeric = isinstance(v, int | float) and not isinstance(v, bool)
            cls = ' class="n"' if numeric else ""
            out.append(f"<td{cls}>{escape(_fmt_value(v))}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _frame_table(df: pl.DataFrame, limit: int = 200) -> str:
    return html_table(df.columns, [list(r) for r in df.head(limit).iter_rows()])


_DIVERSITY_TITLES = {
    "summary": "Diversity summary (dedup stage)",
    "nodes": "Duplicate and contamination rates per node (dedup stage)",
    "openers": "Repeated openers and first sentences (dedup stage)",
    "cluster_sizes": "Duplicate cluster sizes",
}


def _diversity_tables(diversity: Any) -> list[tuple[str, str]]:
    """(title, HTML table) for each table of the dedup stage's diversity report."""
    if diversity is None:
        return []
    if isinstance(diversity, Mapping):
        items = dict(diversity)
    else:
        items = {
            name: getattr(diversity, name)
            for name in ("summary", "nodes", "openers", "cluster_sizes")
            if hasattr(diversity, name)
        }
    out = []
    for name, value in items.items():
        title = _DIVERSITY_TITLES.get(name, f"Diversity: {name}")
        if isinstance(value, pl.DataFrame):
            more = f" (first 200 of {value.height:,} rows)" if value.height > 200 else ""
            out.append((title + more, _frame_table(value)))
        elif isinstance(value, Mapping) and value:
            out.append((title, html_table(["metric", "value"], [[k, v] for k, v in value.items()])))
    return out
