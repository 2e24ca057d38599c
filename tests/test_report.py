"""builder.report: the self-contained report.html and its PNG plots."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from builder.assemble import assemble
from builder.report import (
    document_facts,
    node_table,
    opener_table,
    rejection_facts,
    squarify,
    write_report,
)
from builder.tokens import count_tokens
from tests.support.assemble_data import (
    EMPTY_TOPICS,
    STATS,
    make_config,
    make_rejected,
    make_rows,
    taxonomy,
)

PLOTS = ("coverage", "tokens", "rejections", "duplicates", "openers", "stages")


@pytest.fixture(scope="module")
def data():
    rows = make_rows(500, seed=11)
    return rows, make_rejected(rows, 80, seed=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data) -> Path:
    """A finished run; the report is written from the run directory alone (+ taxonomy)."""
    rows, rejected = data
    run = tmp_path_factory.mktemp("report") / "run"
    cfg = make_config({"output.shard_max_rows": 200})
    assemble(rows, rejected, run, config=cfg, extra_manifest={"stats": STATS})
    write_report(run, taxonomy=taxonomy())
    return run


def html_of(run: Path) -> str:
    return (run / "report.html").read_text(encoding="utf-8")


def test_writes_html_and_png_copies(run: Path) -> None:
    html = html_of(run)
    imgs = re.findall(r'<img class="plot"[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) == len(PLOTS)
    for name, b64 in zip(PLOTS, imgs, strict=True):
        png = (run / "report" / f"{name}.png").read_bytes()
        assert base64.b64decode(b64) == png  # the HTML embeds exactly the PNG copy
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.width >= 800 and im.height >= 200
            assert (
                len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20
            )  # something is drawn


def test_html_is_self_contained(run: Path) -> None:
    html = html_of(run)
    assert not re.search(r"""(?:src|href)\s*=\s*(?!["']?(?:data:|#))""", html)
    assert "url(" not in html and "@import" not in html
    assert not re.search(r"https?://", html)
    assert "<script src" not in html


def test_coverage_shows_gaps_from_the_taxonomy(run: Path) -> None:
    html = html_of(run)
    assert "13 of 15 leaf nodes have at least one document" in html
    for topic in EMPTY_TOPICS:
        row = re.search(rf'<tr class="gap">\s*<td[^>]*>{topic}</td>', html)
        assert row, topic
    assert ">quantum<" not in html  # proposed nodes are not part of the build


def test_node_counts_and_rates(data) -> None:
    rows, rejected = data
    docs = pl.DataFrame(rows).with_columns(
        pl.Series("n_tokens", count_tokens([r["text"] for r in rows]))
    )
    facts = document_facts(docs.lazy())
    nodes = node_table(facts, rejection_facts(pl.DataFrame(rejected).lazy()), taxonomy())
    path = "mathematics/calculus/limits"
    kept = sum(1 for r in rows if r["taxonomy_path"] == path)
    dups = sum(1 for r in rejected if r["taxonomy_path"] == path and r["stage"] == "dedup")
    con = sum(1 for r in rejected if r["taxonomy_path"] == path and r["stage"] == "decontam")
    node = nodes[path]
    assert (node.documents, node.duplicates, node.contaminated) == (kept, dups, con)
    assert node.dup_rate == pytest.approx(dups / (kept + dups + con))
    assert node.contam_rate == pytest.approx(con / (kept + con))
    # totals roll up the tree
    math = nodes["mathematics"]
    assert math.documents == sum(1 for r in rows if r["discipline"] == "mathematics")
    assert math.tokens == int(docs.filter(pl.col("discipline") == "mathematics")["n_tokens"].sum())
    assert nodes["mathematics/calculus/series"].documents == 0
    # preorder: each parent before its children
    order = list(nodes)
    assert order.index("mathematics") < order.index("mathematics/calculus") < order.index(path)
    # without a taxonomy the tree comes from the paths seen, so there are no gaps
    bare = node_table(facts, rejection_facts(None))
    assert not any(n.documents == 0 for n in bare.values())


def test_facts_count_tokens_when_missing(data) -> None:
    rows, _ = data
    frame = pl.DataFrame(rows[:30]).drop("n_tokens")
    facts = document_facts(frame.lazy())
    assert facts["n_tokens"].to_list() == count_tokens([r["text"] for r in rows[:30]])


def test_repeated_openers(run: Path, data) -> None:
    rows, _ = data
    table = opener_table(document_facts(pl.DataFrame(rows).lazy(), 4))
    got = {o: n for o, n, _ in table.iter_rows()}
    for opener in ("In this section we", "Welcome to our chapter", "Let us explore the"):
        expected = sum(1 for r in rows if r["text"].startswith(opener + " "))
        assert got[opener.lower()] == expected
    top = table.row(0, named=True)
    assert top["documents"] == max(got.values())
    assert top["share"] == pytest.approx(top["documents"] / len(rows))
    assert top["opener"] in html_of(run)


def test_cost_and_time_table(run: Path) -> None:
    html = html_of(run)
    assert re.search(r"<td>generate</td><td class=\"n\">35</td><td class=\"n\">400</td>", html)
    assert "$0.0000" in html


def test_empty_run_still_renders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assemble([], [], run, config=make_config())
    path = write_report(run)
    html = path.read_text(encoding="utf-8")
    assert html.count('<img class="plot"') == 5  # no stage timings: no stages plot
    assert "No cost or timing information" in html


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.5, 1000), min_size=1, max_size=30), st.floats(10, 500))
def test_squarify_tiles_the_rectangle(sizes: list[float], width: float) -> None:
    sizes = sorted(sizes, reverse=True)
    height = 300.0
    rects = squarify(sizes, 0, 0, width, height)
    total = sum(sizes)
    for (x, y, w, h), s in zip(rects, sizes, strict=True):
        assert w * h == pytest.approx(s / total * width * height, rel=1e-6)
        assert -1e-6 <= x and x + w <= width + 1e-6 and -1e-6 <= y and y + h <= height + 1e-6
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            ox = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
            oy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
            assert ox <= 1e-6 or oy <= 1e-6  # no two rectangles overlap


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@pytest.mark.browser
def test_report_renders_in_headless_chromium(run: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    # In CI the browser check must run: a missing chromium is a failure there, not a skip.
    assert chromium is not None, "chromium is not installed: run `make browser` (as root)"
    url = (run / "report.html").resolve().as_uri()
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=90, check=True
    ).stdout
    assert f'data-plots-checked="{len(PLOTS)}"' in dom
    assert 'data-plots-broken="0"' in dom
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    heights = [int(h) for h in re.findall(r'data-natural-height="(\d+)"', dom)]
    assert len(widths) == len(PLOTS) and min(widths) >= 800 and min(heights) >= 200

    shot = tmp_path / "report.png"
    subprocess.run(
        [*base, "--window-size=1280,2600", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=90,
        check=True,
    )
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 2600)
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 200  # text + plots, not a blank page
        # The treemap sits in the top part of the page: it is not background-coloured.
        top = rgb.crop((40, 400, 1240, 1100))
        count, _background = max(top.getcolors(maxcolors=1 << 20))
        share_bg = count / (top.width * top.height)
        assert share_bg < 0.6  # the most common colour covers less than 60% of the area


def test_pipeline_inputs_diversity_and_walker_coverage(run: Path, data, tmp_path: Path) -> None:
    """The objects builder.pipeline passes: a DiversityReport and the walker's Coverage."""
    from builder.diversity import diversity_report
    from builder.walk import Coverage

    rows, rejected = data
    cov = Coverage()
    for path in ["mathematics/calculus/limits"] * 3 + ["physics/thermodynamics/entropy"]:
        cov.subtree.update(path.split("/"))
    div = diversity_report(pl.DataFrame(rows).lazy())
    out = tmp_path / "run"
    shutil.copytree(run, out)
    stats = {"cost_usd": 0.5, "stage_seconds": {"generate": 3.0, "assemble": 1.0}}
    html = write_report(
        out, taxonomy=taxonomy(), diversity=div, coverage=cov, stats=stats
    ).read_text(encoding="utf-8")
    assert "<th>units planned</th>" in html
    entropy = re.search(r'<tr class="gap">\s*<td[^>]*>entropy</td>.*?</tr>', html, re.S)
    assert entropy and entropy.group(0).endswith('<td class="n">1</td></tr>')  # 1 unit planned
    assert "Duplicate and contamination rates per node (dedup stage)" in html
    assert "Diversity summary (dedup stage)" in html
    assert (out / "report" / "stages.png").exists()
    assert "$0.5000" in html


def test_session_documents_show_under_their_session() -> None:
    """Documents written from syllabus sessions (taxonomy_path = the subject) appear in the
    coverage tree as sessions under their subject, with their counts, not as zeros."""
    docs = pl.LazyFrame(
        {
            "id": ["a", "b", "c"],
            "text": ["Loops repeat work.", "A for loop walks a list.", "Lists hold items."],
            "taxonomy_path": ["cs/python", "cs/python", "cs/python/lists"],
            "session": ["Loops and iteration", "Loops and iteration", None],
            "n_tokens": [4, 6, 4],
        }
    )
    facts = document_facts(docs)
    nodes = node_table(
        facts,
        pl.DataFrame(schema={"taxonomy_path": pl.String, "stage": pl.String, "reason": pl.String}),
    )
    session = nodes["cs/python/session: Loops and iteration"]
    assert session.documents == 2 and session.parent == "cs/python"
    assert session.name == "session: Loops and iteration"
    assert nodes["cs/python"].documents == 3 and nodes["cs/python/lists"].documents == 1
