"""``corpus dedup`` and ``corpus decontam``: the stages on their own, on any Parquet/JSONL."""

from __future__ import annotations

import glob
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from builder.cli.options import (
    config_option,
    executor_option,
    executor_overrides,
    ray_address_option,
)
from builder.errors import BuilderError, ConfigError, Problem, ValidationError

# Settings fields whose flag is not simply --field-name.
_FLAG_NAMES = {"text_field": "--field", "exact": "--no-exact", "near": "--no-near"}
_BOUNDS = {
    "greater than or equal to": ">=",
    "less than or equal to": "<=",
    "greater than": ">",
    "less than": "<",
}


def _flag(field: str) -> str:
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _short_message(msg: str) -> str:
    """Pydantic's "Input should be less than or equal to 1" -> "must be <= 1"."""
    msg = msg.removeprefix("Value error, ")
    m = re.fullmatch(r"Input should be (.+?) (-?[\d.e+]+)", msg)
    if m and m.group(1) in _BOUNDS:
        return f"must be {_BOUNDS[m.group(1)]} {m.group(2)}"
    return msg[:1].lower() + msg[1:].replace("Input should be", "must be")


def _banding_hint(values: dict[str, Any]) -> str:
    """Values of --bands/--rows/--num-perm that satisfy bands x rows <= num_perm."""
    bands, rows, num_perm = values.get("bands"), values.get("rows"), values.get("num_perm")
    if not all(isinstance(v, int) and v >= 1 for v in (bands, rows, num_perm)):
        return "bands x rows must not exceed num_perm; see `corpus dedup --explain`"
    options = []
    if num_perm // bands >= 1:
        options.append(f"--rows {num_perm // bands}")
    if num_perm // rows >= 1:
        options.append(f"--bands {num_perm // rows}")
    if bands * rows <= 1024:
        options.append(f"--num-perm {bands * rows}")
    return "use " + " or ".join(options) + "; see `corpus dedup --explain`"


def settings_error(
    exc: Any, section: str, flags: dict[str, Any], values: dict[str, Any], source: str | None
) -> BuilderError:
    """One user error per bad option of a pydantic ``ValidationError`` from flags + config.

    ``flags`` are the values given on the command line (field -> value, None = not given);
    a bad value that came from the config names ``[section] field`` in the config file instead.
    ``values`` are the merged settings values (for the bands x rows hint).
    """
    problems: list[Problem] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        msg = _short_message(str(err.get("msg", "invalid value")))
        if not loc:  # a whole-model check: bands x rows vs num_perm, scheme vs mode
            if "bands x rows" in msg:
                where = " ".join(
                    f"{_flag(f)} {flags[f]}"
                    for f in ("bands", "rows", "num_perm")
                    if flags.get(f) is not None
                )
                problems.append(
                    Problem(f"{where + ': ' if where else ''}{msg}", hint=_banding_hint(values))
                )
            elif "scheme 'legacy'" in msg:
                problems.append(Problem(msg, hint="add --mode datasketch, or --scheme affine32"))
            else:
                problems.append(Problem(msg, hint=f"see `corpus {section} --help`"))
            continue
        field = loc[0]
        value = err.get("input")
        if isinstance(value, float):
            value = f"{value:g}"
        if flags.get(field) is not None:
            problems.append(Problem(f"{_flag(field)} {value}: {msg}"))
        else:
            problems.append(
                Problem(
                    f"[{section}] {field} = {value}: {msg}",
                    file=source,
                    hint=f"fix it in the config or override it with {_flag(field)}",
                )
            )
    if len(problems) == 1:
        p = problems[0]
        return ConfigError(p.message, file=p.file, line=p.line, hint=p.hint)
    return ValidationError(problems, summary=f"{len(problems)} invalid {section} option(s)")


def _with_overrides(section: str, base: Any, source: str | None, **flags: Any) -> Any:
    """``base.with_overrides(**flags)``, pydantic errors turned into per-flag user errors."""
    from pydantic import ValidationError as PydanticValidationError

    try:
        return base.with_overrides(**flags)
    except PydanticValidationError as exc:
        values = {**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}}
        raise settings_error(exc, section, flags, values, source) from None


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


def _run_stage(name: str, cfg: Any, run_name: str) -> None:
    """Run the build's ``name`` stage on a run directory (``corpus <name> --run RUN``)."""
    import json

    from builder.run.build import run_named

    summary = run_named(
        cfg, [name], run_name, progress=False, log=lambda m: click.echo(m, err=True)
    )
    click.echo(json.dumps({"run_dir": str(summary.run_dir), **summary.counters}, indent=2))


#: Inputs from this size on get their worker processes started before anything else.
EARLY_POOL_BYTES = 4 << 20


def _input_bytes(path: str) -> int:
    """Total size of the files an input names (a file, a directory's files, a glob); 0 when
    it names none. Standard library only: this runs before the heavy imports."""
    try:
        if os.path.isfile(path):
            return os.path.getsize(path)
        if os.path.isdir(path):
            with os.scandir(path) as entries:
                return sum(e.stat().st_size for e in entries if e.is_file())
        return sum(os.path.getsize(p) for p in glob.glob(path) if os.path.isfile(p))
    except OSError:
        return 0


def _early_pool(input_path: str | None, workers: int | None, executor: str | None) -> Any:
    """Worker processes started first thing, so they import numpy and Polars (~0.3 s each)
    while this process imports the config and the engine: local runs on inputs worth more
    than one worker. ``dedup_files`` uses them (or replaces them when the config asks for
    another number of workers); None when not worth it."""
    if input_path is None or (executor or os.environ.get("CORPUS_EXECUTOR")) == "ray":
        return None
    count = workers or os.cpu_count() or 1
    if count <= 1 or _input_bytes(input_path) < EARLY_POOL_BYTES:
        return None
    from builder.dedup.pool import WorkerPool

    return WorkerPool(count)


def _dedup_files(cfg: Any, *args: Any, pool: Any = None, **kwargs: Any) -> Any:
    """``dedup_files`` with the configured executor's task map (Ray); the local executor
    needs none (and never imports Ray). ``pool``: workers started early (local only)."""
    from builder.dedup import dedup_files

    if cfg.run.executor == "local":
        return dedup_files(*args, pool=pool, **kwargs)
    if pool is not None:
        pool.close(wait=False)
    from builder.run.executor import make_executor

    executor = make_executor(cfg.run.executor, cfg)
    try:
        return dedup_files(*args, mapper=executor.task_map, **kwargs)
    finally:
        executor.close()
        if pool is not None:
            pool.close()  # wait for the early workers, which exited meanwhile


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
    "--run",
    "run_name",
    default=None,
    help="Dedup a run's filtered documents instead (run name or directory; the build's stage).",
)
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
@click.option(
    "--band-buckets",
    type=click.IntRange(min=1),
    help="Buckets the band grouping is split into (default: ~4M band entries each); "
    "more buckets, less memory. Results never depend on it.",
)
@executor_option
@ray_address_option
@click.option("--save-signatures", is_flag=True, help="Also write OUTDIR/signatures.npy.")
@click.option("--no-report", is_flag=True, help="Skip the diversity report.")
@click.option(
    "--explain",
    is_flag=True,
    help="Print the S-curve of the chosen parameters (then run, if INPUT).",
)
def dedup(
    input_path: str | None,
    run_name: str | None,
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
    band_buckets: int | None,
    executor: str | None,
    ray_address: str | None,
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

    Intermediates (signatures and band buckets per piece of input) stay in
    OUTDIR/dedup-partial/ until the run ends: rerun the same command after a crash or
    kill and the finished pieces are reused. With --executor ray the signature and bucket
    tasks run on a Ray cluster (OUTDIR must be on a filesystem every node sees).

    \b
    Example:
      corpus dedup corpus.parquet -o out/dedup
      corpus dedup shards/ -o out/dedup --threshold 0.85 --text-column content
      corpus dedup --explain --bands 20 --rows 6
      corpus dedup shards/ -o out/dedup --executor ray --ray-address 10.0.0.5:6379
    """
    pool = None
    if run_name is None and outdir is not None:
        pool = _early_pool(input_path, workers, executor)
    try:
        _dedup_command(
            input_path,
            run_name,
            outdir,
            config_path,
            text_column,
            id_column,
            dict(
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
            ),
            band_buckets=band_buckets,
            executor=executor,
            ray_address=ray_address,
            save_signatures=save_signatures,
            no_report=no_report,
            explain=explain,
            pool=pool,
        )
    finally:
        if pool is not None:
            pool.close()


def _dedup_command(
    input_path: str | None,
    run_name: str | None,
    outdir: str | None,
    config_path: str | None,
    text_column: str,
    id_column: str,
    flags: dict[str, Any],
    *,
    band_buckets: int | None,
    executor: str | None,
    ray_address: str | None,
    save_signatures: bool,
    no_report: bool,
    explain: bool,
    pool: Any,
) -> None:
    """The body of ``corpus dedup`` (``flags``: the settings given on the command line)."""
    from builder.config import load_config
    from builder.dedup import explain as explain_text

    cfg = load_config(config_path, executor_overrides(executor, ray_address))
    settings = _with_overrides("dedup", cfg.dedup, cfg.source, **flags)
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
    if run_name is not None:
        if input_path is not None or outdir is not None:
            raise click.UsageError("give INPUT -o OUTDIR, or --run RUN, not both")
        _run_stage("dedup", cfg.model_copy(update={"dedup": settings}), run_name)
        return
    if input_path is None:
        raise click.UsageError("missing INPUT (a Parquet/JSONL file, directory or glob)")
    if outdir is None:
        raise click.UsageError("missing -o/--output OUTDIR")
    result = _dedup_files(
        cfg,
        input_path,
        outdir,
        settings,
        text_column=text_column,
        id_column=id_column,
        workers=flags["workers"],
        buckets=band_buckets,
        progress=_progress("signatures"),
        save_signatures=save_signatures,
        diversity=not no_report,
        pool=pool,
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
    if s.pieces_reused:
        click.echo(
            f"  resumed: {s.pieces_reused} of {s.pieces} signature pieces reused from "
            "the interrupted run"
        )
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
@click.argument("input_path", metavar="[INPUT]", required=False, type=click.Path())
@click.argument("more_benchmarks", metavar="[BENCHMARK...]", nargs=-1, type=click.Path())
@click.option(
    "--run",
    "run_name",
    default=None,
    help="Decontaminate a run's deduplicated documents instead (run name or directory).",
)
@click.option(
    "--against",
    multiple=True,
    type=click.Path(),
    help="Benchmark file (JSONL, Parquet or plain text), directory or glob; repeatable.",
)
@click.option("-o", "--output", "outdir", default=None, type=click.Path(file_okay=False))
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
    input_path: str | None,
    more_benchmarks: tuple[str, ...],
    run_name: str | None,
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
    from builder.errors import InputError

    cfg = load_config(config_path)
    settings = _with_overrides(
        "decontam",
        cfg.decontam,
        cfg.source,
        ngram=ngram,
        min_words=min_words,
        fuzzy=fuzzy,
        fuzzy_threshold=fuzzy_threshold,
        text_field=field,
        workers=workers,
    )
    if run_name is not None:
        if input_path is not None or outdir is not None or against or more_benchmarks:
            raise click.UsageError(
                "--run uses the config's [decontam] benchmarks: give no INPUT, -o or --against"
            )
        _run_stage("decontam", cfg.model_copy(update={"decontam": settings}), run_name)
        return
    if input_path is None:
        raise click.UsageError("missing INPUT (a Parquet/JSONL file, directory or glob)")
    if outdir is None:
        raise click.UsageError("missing -o/--output OUTDIR")
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
