"""``corpus dedup`` and ``corpus decontam``: the stages on their own, on any Parquet/JSONL."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from builder.cli.options import config_option


def _progress(label: str):
    """A progress callback printing to stderr at most every 2 seconds (only on a TTY)."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 2 or done == total:
            last[0] = now
            click.echo(f"\r{label}: {done}/{total} rows", err=True, nl=done == total)

    return report


def _echo_nodes(nodes, columns: list[str]) -> None:
    from builder.diversity import format_node_rates

    if nodes is None:
        return
    text = format_node_rates(nodes, columns)
    if text:
        click.echo(text)


@click.command()
@click.argument("input_path", metavar="[INPUT]", required=False, type=click.Path())
@click.option(
    "-o", "--output", "outdir", type=click.Path(file_okay=False), help="Output directory."
)
@config_option
@click.option("--text-column", default="text", show_default=True, help="Column with the text.")
@click.option(
    "--id-column",
    default="id",
    show_default=True,
    help="Column with unique row ids (if absent, ids are derived from the text).",
)
@click.option("--threshold", type=float, help="Jaccard similarity that makes a near duplicate.")
@click.option("--num-perm", type=int, help="MinHash permutations (signature length).")
@click.option("--bands", type=int, help="LSH bands (more: higher recall, more candidates).")
@click.option("--rows", type=int, help="Rows per band (more: fewer low-similarity candidates).")
@click.option("--shingle-size", type=int, help="Words per shingle (word n-gram size).")
@click.option("--seed", type=int, help="Seed of the MinHash permutations.")
@click.option(
    "--mode",
    type=click.Choice(["fast", "datasketch"]),
    help="fast (vectorised hashing) or datasketch (signatures equal to datasketch.MinHash).",
)
@click.option(
    "--scheme",
    type=click.Choice(["affine32", "legacy"]),
    help="datasketch mode: permutation scheme of datasketch >= 2.0 (affine32) or < 2.0.",
)
@click.option("--no-exact", is_flag=True, help="Skip exact (normalised text) dedup.")
@click.option("--no-near", is_flag=True, help="Skip near-duplicate (MinHash LSH) dedup.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (default: cores).")
@click.option("--save-signatures", is_flag=True, help="Also write OUTDIR/signatures.npy.")
@click.option("--no-report", is_flag=True, help="Skip the diversity report.")
@click.option(
    "--explain",
    is_flag=True,
    help="Print the S-curve of the chosen parameters (then run, if INPUT).",
)
def dedup(
    input_path: str | None,
    outdir: str | None,
    config_path: str | None,
    text_column: str,
    id_column: str,
    threshold: float | None,
    num_perm: int | None,
    bands: int | None,
    rows: int | None,
    shingle_size: int | None,
    seed: int | None,
    mode: str | None,
    scheme: str | None,
    no_exact: bool,
    no_near: bool,
    workers: int | None,
    save_signatures: bool,
    no_report: bool,
    explain: bool,
) -> None:
    """Remove exact and near-duplicate rows from a Parquet or JSONL table.

    Exact: same text after NFKC, lowercasing and whitespace collapsing. Near: MinHash LSH
    over word 5-gram shingles (default 128 permutations, 16 bands x 8 rows, Jaccard 0.8),
    candidates verified by estimated Jaccard. One row per cluster is kept: verified first,
    then the longest text, then the smallest id.

    Writes OUTDIR/kept.parquet (surviving rows, all columns), OUTDIR/clusters.parquet
    (id, cluster_id, representative_id, kind exact|near, ...) and the diversity report
    (OUTDIR/diversity_*.parquet). INPUT may be a file, a directory or a glob.

    \b
    Example:
      corpus dedup corpus.parquet -o out/dedup
      corpus dedup shards/ -o out/dedup --threshold 0.85 --text-column content
      corpus dedup --explain --bands 20 --rows 6
    """
    from builder.config import load_config
    from builder.dedup import dedup_files
    from builder.dedup import explain as explain_text
    from builder.errors import ConfigError

    cfg = load_config(config_path)
    try:
        settings = cfg.dedup.with_overrides(
            threshold=threshold,
            num_perm=num_perm,
            bands=bands,
            rows=rows,
            shingle_size=shingle_size,
            seed=seed,
            mode=mode,
            scheme=scheme,
            exact=False if no_exact else None,
            near=False if no_near else None,
            workers=workers,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        msg = str(exc).splitlines()
        detail = next((m.strip() for m in msg[1:] if m.strip() and not m.startswith(" ")), "")
        raise ConfigError(
            f"invalid dedup parameters: {detail or msg[0]}",
            hint="see `corpus dedup --explain` for how bands, rows and num_perm relate",
        ) from None
    if explain:
        click.echo(
            explain_text(
                num_perm=settings.num_perm,
                bands=settings.bands,
                rows=settings.rows,
                threshold=settings.threshold,
                shingle_size=settings.shingle_size,
            )
        )
        if input_path is None:
            return
        click.echo("")
    if input_path is None:
        raise click.UsageError("missing INPUT (a Parquet/JSONL file, directory or glob)")
    if outdir is None:
        raise click.UsageError("missing -o/--output OUTDIR")
    result = dedup_files(
        input_path,
        outdir,
        settings,
        text_column=text_column,
        id_column=id_column,
        workers=workers,
        progress=_progress("signatures"),
        save_signatures=save_signatures,
        diversity=not no_report,
    )
    s = result.stats
    click.echo(
        f"dedup: {s.rows_in} rows in, {s.rows_out} kept, {s.removed} removed "
        f"({s.exact_removed} exact, {s.near_removed} near) in {s.clusters} clusters "
        f"(largest {s.largest_cluster})"
    )
    click.echo(
        f"  near: {s.candidate_pairs} candidate pairs, {s.verified_pairs} verified "
        f"(mode {settings.mode}, {settings.num_perm} perms, {settings.bands}x{settings.rows}, "
        f"{settings.shingle_size}-word shingles, threshold {settings.threshold:g})"
    )
    if s.empty_texts:
        click.echo(f"  {s.empty_texts} rows have no words (only exact dedup applies to them)")
    click.echo(f"  {s.seconds:.1f} s ({s.docs_per_s:.0f} docs/s, {s.workers} worker(s))")
    if result.diversity is not None:
        d = result.diversity.summary
        click.echo(
            f"  openers: {d['opener_repeat_rate']:.1%} of rows share their first "
            f"{d['opener_words']} words, {d['sentence_repeat_rate']:.1%} their first sentence"
        )
    for name in ("kept", "clusters"):
        click.echo(f"  wrote {result.paths[name]}")
    if "signatures" in result.paths:
        click.echo(f"  wrote {result.paths['signatures']}")
    _echo_nodes(result.nodes, ["dup_rate", "exact_dup_rate", "near_dup_rate"])


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("more_benchmarks", metavar="[BENCHMARK...]", nargs=-1, type=click.Path())
@click.option(
    "--against",
    multiple=True,
    type=click.Path(),
    help="Benchmark file (JSONL, Parquet or plain text), directory or glob; repeatable.",
)
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False))
@config_option
@click.option("--text-column", default="text", show_default=True, help="Column with the text.")
@click.option("--id-column", default="id", show_default=True, help="Column with unique ids.")
@click.option(
    "--field",
    help="Benchmark field/column with the item text (default: text, "
    "question, prompt, input, content, problem, passage).",
)
@click.option("--ngram", type=int, help="Words in a matching run (default 13).")
@click.option("--min-words", type=int, help="Shorter items (>= this many words) match whole.")
@click.option(
    "--fuzzy/--no-fuzzy",
    default=None,
    help="Score hits and catch lightly edited passages with rapidfuzz.",
)
@click.option("--fuzzy-threshold", type=float, help="Fuzzy score (0-100) that flags a passage.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (default: cores).")
def decontam(
    input_path: str,
    more_benchmarks: tuple[str, ...],
    against: tuple[str, ...],
    outdir: str,
    config_path: str | None,
    text_column: str,
    id_column: str,
    field: str | None,
    ngram: int | None,
    min_words: int | None,
    fuzzy: bool | None,
    fuzzy_threshold: float | None,
    workers: int | None,
) -> None:
    """Remove documents that overlap benchmark texts (13-word runs, as Phi).

    Words are normalised (NFKC, lowercase, punctuation dropped). Writes OUTDIR/clean.parquet
    (rows without hits), OUTDIR/hits.parquet (id, benchmark, item, ngram, ...) and
    OUTDIR/rejected.parquet (contaminated rows with the reason). Benchmark files may be
    JSONL/Parquet (one item per row) or plain text (one item per paragraph, else per line);
    give several after --against.

    \b
    Example:
      corpus decontam corpus.parquet --against mmlu.jsonl gsm8k.parquet -o out/decontam
      corpus decontam corpus.jsonl --against bench/ --field question --fuzzy -o out
    """
    from builder.config import load_config
    from builder.decontam import decontaminate_files
    from builder.errors import ConfigError, InputError

    cfg = load_config(config_path)
    files = [*against, *more_benchmarks]
    if more_benchmarks and not against:
        raise click.UsageError("benchmark files go after --against (e.g. --against a.jsonl b.txt)")
    if not files:
        files = [str(cfg.path(b)) for b in cfg.decontam.benchmarks]
    if not files:
        raise InputError(
            "no benchmark files given",
            hint="pass --against FILE..., or set [decontam] benchmarks in corpus.toml",
        )
    try:
        settings = cfg.decontam.with_overrides(
            ngram=ngram,
            min_words=min_words,
            fuzzy=fuzzy,
            fuzzy_threshold=fuzzy_threshold,
            text_field=field,
            workers=workers,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid decontam parameters: {exc}") from None
    result = decontaminate_files(
        input_path,
        files,
        outdir,
        settings,
        text_column=text_column,
        id_column=id_column,
        field=settings.text_field,
        workers=workers,
    )
    s = result.stats
    click.echo(
        f"decontam: {s.rows_in} rows in, {s.rows_out} clean, {s.contaminated} contaminated "
        f"({s.hits} hits against {s.benchmark_items} items in {s.benchmark_files} file(s))"
    )
    click.echo(
        f"  {settings.ngram}-word runs{', fuzzy check' if settings.fuzzy else ''}; "
        f"{s.items_too_short} item(s) shorter than {settings.min_words} words not checked; "
        f"{s.seconds:.1f} s"
    )
    if result.hits.height:
        by_file = result.hits.group_by("benchmark").len().sort("len", descending=True)
        for r in by_file.iter_rows(named=True):
            click.echo(f"  {r['len']:>6} hits  {Path(r['benchmark']).name}")
    for name in ("clean", "hits", "rejected"):
        click.echo(f"  wrote {result.paths[name]}")
    _echo_nodes(result.nodes, ["contaminated_rate"])
