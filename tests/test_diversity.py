"""Diversity report: per-node duplicate/contamination rates, openers, cluster sizes."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from builder.dedup import dedup_table
from builder.diversity import ALL_NODE, diversity_report, format_node_rates


def _corpus() -> pl.DataFrame:
    base = " ".join(f"word{i}" for i in range(60))
    rows = [
        ("a1", "math/algebra", "In this section we will learn. " + base),
        ("a2", "math/algebra", "In this section we will learn. " + base),  # exact dup of a1
        ("a3", "math/algebra", "Groups are sets with an operation. " + base[::-1]),
        ("c1", "math/calculus", "In this section we will study limits closely. x y z w"),
        ("c2", "math/calculus", "Limits describe values near a point. p q r s t u"),
        ("p1", "physics", "Waves carry energy through a medium. m n o"),
    ]
    return pl.DataFrame(rows, schema=["id", "taxonomy_path", "text"], orient="row")


def test_rates_openers_and_cluster_sizes(tmp_path: Path):
    df = _corpus()
    res = dedup_table(df, workers=1)
    hits = pl.DataFrame({"id": ["c2"], "benchmark": ["b.jsonl"], "item": [0], "ngram": ["x"]})
    rep = diversity_report(df, res.clusters, hits, opener_words=5)
    nodes = {r["node"]: r for r in rep.nodes.iter_rows(named=True)}
    assert nodes[ALL_NODE]["docs"] == 6
    assert nodes["math"]["docs"] == 5 and nodes["math/algebra"]["docs"] == 3
    assert nodes["math/algebra"]["exact_dup"] == 1
    assert nodes["math/algebra"]["dup_rate"] == round(1 / 3, 4)
    assert nodes["math/calculus"]["contaminated_rate"] == 0.5
    assert nodes["physics"]["dup_rate"] == 0
    # first 5 words "in this section we will" open a1, a2 and c1
    assert nodes[ALL_NODE]["opener_repeat"] == 3
    assert nodes["math/algebra"]["opener_repeat"] == 2  # within the node: a1, a2
    top = rep.openers.row(0, named=True)
    assert top["opener"] == "in this section we will" and top["count"] == 3
    assert rep.cluster_sizes.to_dicts() == [{"size": 2, "clusters": 1, "documents": 2}]
    assert rep.summary["dup_rate"] == round(1 / 6, 4) and rep.summary["contaminated"] == 1

    paths = rep.write(tmp_path)
    assert pl.read_parquet(paths["nodes"]).height == rep.nodes.height
    md = rep.to_markdown()
    assert "math/algebra" in md and "in this section we will" in md
    table = format_node_rates(rep.nodes, ["dup_rate", "contaminated_rate"])
    assert "math/calculus" in table and "50.00%" in table


def test_without_taxonomy_or_clusters():
    df = _corpus().drop("taxonomy_path")
    rep = diversity_report(df)
    assert rep.nodes["node"].to_list() == [ALL_NODE]
    assert rep.summary["dup_rate"] == 0 and rep.cluster_sizes.height == 0
    assert format_node_rates(rep.nodes, ["dup_rate"]) == ""


def _flagged_paths(n: int, *, seed: int, second: bool = False) -> pl.DataFrame:
    """``n`` rows of odd taxonomy paths (nested, null, empty, stray slashes) and a nullable
    flag ``a`` (and a flag ``b`` when ``second``), drawn with ``seed``."""
    import random

    rng = random.Random(seed)
    paths = ["math/calc/limits", "math/calc", "math/alg", "bio", None, "", "/phys//q/"]
    columns = {
        "taxonomy_path": [rng.choice(paths) for _ in range(n)],
        "a": [rng.choice([True, False, None]) for _ in range(n)],
    }
    if second:
        columns["b"] = [rng.random() < 0.2 for _ in range(n)]
    return pl.DataFrame(
        columns, schema={c: pl.Boolean for c in columns} | {"taxonomy_path": pl.String}
    )


def test_node_rates_count_per_path_then_expand_only_the_paths(monkeypatch) -> None:
    """``node_rates`` equals counting one row per (row, ancestor node), while expanding only
    the distinct paths: what it holds follows the taxonomy, not the number of rows."""
    from builder import diversity

    n = 3000
    rows = _flagged_paths(n, seed=3)
    expanded_rows: list[int] = []
    expand = diversity.expand_nodes

    def counting(frame: pl.DataFrame, *args: object) -> pl.DataFrame:
        expanded_rows.append(frame.height)
        return expand(frame, *args)

    monkeypatch.setattr(diversity, "expand_nodes", counting)
    got = diversity.node_rates(rows, ["a"])
    assert expanded_rows == [rows["taxonomy_path"].n_unique()]
    # The per-row reading: every row under each of its nodes, then counted.
    per_row = (
        expand(rows)
        .group_by("node", "depth")
        .agg(pl.len().alias("docs"), pl.col("a").fill_null(False).sum().cast(pl.Int64))
        .with_columns((pl.col("a") / pl.col("docs")).round(4).alias("a_rate"))
        .sort("depth", "node")
    )
    assert got.to_dicts() == per_row.to_dicts()
    assert got.filter(pl.col("node") == ALL_NODE)["docs"].item() == n


def test_node_rates_over_batches_equal_node_rates_over_all_rows() -> None:
    """Per-path counts added batch by batch give the rates of all the rows at once,
    whatever the cut (paths and nulls spread over several batches, a path type cast)."""
    from builder.diversity import node_rates, node_rates_batches

    n = 2000
    rows = _flagged_paths(n, seed=5, second=True)
    whole = node_rates(rows, ["a", "b"])
    for cuts in ([1], [0, 700, 1999], [250, 500, 1000, 1500]):
        bounds = [0, *cuts, n]
        parts = [rows.slice(lo, hi - lo) for lo, hi in zip(bounds, bounds[1:], strict=False)]
        assert node_rates_batches(parts, ["a", "b"]).to_dicts() == whole.to_dicts()
    as_lists = rows.with_columns(pl.col("taxonomy_path").str.split("/"))
    listed = node_rates_batches([as_lists.head(900), as_lists.tail(n - 900)], ["a", "b"])
    assert listed.to_dicts() == node_rates(as_lists, ["a", "b"]).to_dicts()
