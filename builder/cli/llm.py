"""``corpus llm``: the builder's LLM engine on its own (run a requests file, check endpoints)."""

from __future__ import annotations

import json

import click

from builder.cli.options import cache_dir_option, config_option, max_cost_option


def _settings(config_path: str | None, cache_dir: str | None, batch: bool = False):
    from builder.config import load_config
    from builder.llm.engine import resolve_cache_dir

    cfg = load_config(config_path, {"llm.batch": True if batch else None})
    return cfg.llm, resolve_cache_dir(cache_dir, cfg.llm, root=cfg.root)


@click.group()
def llm() -> None:
    """Use the LLM engine on its own: run a requests file, check endpoints.

    \b
    Example:
      corpus llm check
      corpus llm run requests.jsonl -o results.jsonl --max-cost 2
    """


@llm.command("run")
@click.argument("requests_path", metavar="REQUESTS.jsonl", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Results JSONL (OpenAI Batch output format); appended to, resumable.",
)
@config_option
@cache_dir_option
@max_cost_option
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Remove 'request_failed' lines from the output and run those requests again.",
)
@click.option("--batch", is_flag=True, help="Use the endpoint's Batch API (half price, slower).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def run_cmd(
    requests_path: str,
    output: str,
    config_path: str | None,
    cache_dir: str | None,
    max_cost: float | None,
    retry_failed: bool,
    batch: bool,
    quiet: bool,
) -> None:
    """Run chat requests from a file in the OpenAI Batch input format.

    Each line is {"custom_id", "method", "url", "body"}; each result is written as
    {"custom_id", "response": {"status_code", "body"}, "error"}, one line per request, as it
    completes, through the builder's cache, retries and budget. Requests go to the endpoints
    of corpus.toml ([llm]; body.model is not used). Rerunning after an interruption completes
    the file: each custom_id appears exactly once. Exit code 1 if some requests failed, 3 if
    --max-cost stopped the run.

    \b
    Example:
      corpus llm run requests.jsonl -o results.jsonl --config corpus.toml --max-cost 5
    """
    from pathlib import Path

    from builder.errors import InputError
    from builder.llm.engine import open_engine
    from builder.llm.jobfile import run_jobfile

    if not Path(requests_path).is_file():
        raise InputError("requests file not found", file=requests_path)
    settings, cache = _settings(config_path, cache_dir, batch)
    with open_engine(settings, cache_dir=cache, progress=False if quiet else None) as engine:
        summary = run_jobfile(
            engine, requests_path, output, max_cost=max_cost, retry_failed=retry_failed
        )
    click.echo(
        f"{summary.written} written ({summary.ok} ok, {summary.length} length, "
        f"{summary.invalid} invalid, {summary.failed} failed, {summary.cached} from cache), "
        f"{summary.already_done} already in {output}; ${summary.cost:.4f} spent",
        err=True,
    )
    if summary.failed:
        click.echo(
            f"{summary.failed} request(s) failed (error.code = request_failed in {output}); "
            "rerun with --retry-failed to try them again",
            err=True,
        )
        raise click.exceptions.Exit(1)


@llm.command("check")
@config_option
@cache_dir_option
@click.option("--chat", is_flag=True, help="Also send one tiny chat completion to each endpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per endpoint.")
def check_cmd(config_path: str | None, cache_dir: str | None, chat: bool, as_json: bool) -> None:
    """Tell whether each configured endpoint answers, with its latency and model list.

    With no endpoint configured this starts (and stops) the embedded model server.

    \b
    Example:
      corpus llm check --config corpus.toml --chat
    """
    from builder.errors import LLMError
    from builder.llm.check import check_endpoints
    from builder.llm.engine import open_engine

    settings, cache = _settings(config_path, cache_dir)
    with open_engine(settings, cache_dir=cache, progress=False) as engine:
        statuses = check_endpoints(engine, chat=chat)
    bad = 0
    for st in statuses:
        if as_json:
            click.echo(json.dumps(st.as_dict()))
            bad += not st.ok
            continue
        if st.ok:
            models = ", ".join(st.models[:8]) + (" ..." if len(st.models) > 8 else "")
            line = f"ok    {st.endpoint}  {st.latency_ms:.0f} ms  models: {models or '(none)'}"
            if st.chat_latency_ms is not None:
                line += f"  chat: {st.chat_latency_ms:.0f} ms"
            click.echo(line)
            if st.model_listed is False:
                click.echo(f"      warning: model {st.model!r} is not in the endpoint's list")
        else:
            bad += 1
            click.echo(f"FAIL  {st.endpoint}  {st.error}")
    if bad:
        raise LLMError(
            f"{bad} of {len(statuses)} endpoint(s) did not answer",
            hint="check [llm] base_url, api_key_env and the network",
        )
