"""``corpus review``: the curator web app over one run and the taxonomy."""

from __future__ import annotations

from pathlib import Path

import click

from builder.cli.options import cache_dir_option, config_option, taxonomy_option


@click.command("review")
@click.option(
    "--run",
    "run",
    default=None,
    metavar="DIR",
    help="Run directory (or the name of a run under [output] dir). Default: [output] run.",
)
@taxonomy_option
@config_option
@cache_dir_option
@click.option("--port", type=click.IntRange(0, 65535), default=8765, help="Port (0: any free one).")
@click.option(
    "--host", default="127.0.0.1", help="Address to listen on; any but loopback needs --token."
)
@click.option(
    "--token", default=None, help="Secret every request must carry (required off loopback)."
)
@click.option("--read-only", is_flag=True, help="Browse only: refuse every write.")
def review(
    run: str | None,
    taxonomy_dir: str | None,
    config_path: str | None,
    cache_dir: str | None,
    port: int,
    host: str,
    token: str | None,
    read_only: bool,
) -> None:
    """Serve the curator review app on 127.0.0.1 and print its URL (nothing is opened).

    Pages: the taxonomy with per-node documents, tokens, rejection and duplicate rates and
    scores of the run; proposed nodes and syllabi to edit, approve or reject (written by the
    same editor as `corpus taxonomy approve|reject` and `corpus syllabus approve`); the
    documents of a node, filterable, with full text, the messages sent and verification;
    flags: flagged documents are dropped by the next `corpus build` at assembly.

    \b
    Example:
      corpus review
      corpus review --run outputs/v2 --port 0 --read-only
      corpus review --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    from builder.cli.taxonomy import resolve_taxonomy_dir
    from builder.config import load_config
    from builder.errors import ConfigError, InputError
    from builder.llm.engine import resolve_cache_dir
    from builder.review.app import LOOPBACK_HOSTS, ReviewSettings
    from builder.review.server import serve

    if host not in LOOPBACK_HOSTS and not token:
        raise ConfigError(
            f"--host {host} exposes the review app beyond this machine",
            hint="add --token SECRET (every request must then carry it), or use --host 127.0.0.1",
        )
    cfg = load_config(config_path)
    if run is not None and Path(run).is_dir():
        run_dir = Path(run)
    else:
        run_dir = cfg.path(cfg.output.dir) / (run or cfg.output.run)
    if not (run_dir / "documents").is_dir() and not (run_dir / "rejected.parquet").exists():
        raise InputError(
            f"{run_dir} is not a built run (no documents/ or rejected.parquet)",
            hint="pass --run DIR of a run that `corpus build` wrote",
        )
    settings = ReviewSettings(
        run_dir=run_dir,
        taxonomy_dir=resolve_taxonomy_dir(taxonomy_dir, config_path),
        cache_dir=resolve_cache_dir(cache_dir, cfg.llm, root=cfg.root),
        config=cfg,
        read_only=read_only,
        host=host,
        token=token,
    )

    def ready(url: str) -> None:
        mode = " (read-only)" if read_only else ""
        click.echo(f"review app for {run_dir}{mode}: {url}")
        click.echo("press Ctrl-C to stop", err=True)

    serve(settings, port, on_ready=ready)
