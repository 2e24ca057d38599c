"""The ``corpus`` command: a thin click layer over the library.

Subcommands are imported lazily, so one command's import cost or breakage never slows or
breaks another (``corpus --help`` imports nothing heavy). Library code raises
``BuilderError``; only ``main`` turns it into ``file:line: message`` lines and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from builder import __version__
from builder.errors import BuilderError

# One BLAS thread unless the user chose otherwise (set before numpy loads OpenBLAS): the
# stages parallelise themselves (process pools, Polars' thread pool), and OpenBLAS's own
# threads spinning against those on a busy 2-core machine made the diversity summary's
# 256 x 256 eigenvalue problems 40x slower (87 ms each instead of 2 ms).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Arrow's allocator (mimalloc) hands freed pages back at once instead of keeping them for
# reuse (set before pyarrow loads): otherwise RSS climbs by hundreds of MB while a stage
# streams a large file batch by batch, though Arrow holds one batch (measured 200 -> 310 MB
# over 20 batches of 10k texts, flat at ~175 MB with this).
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

# name -> "module:attribute" of a click command or group.
COMMANDS: dict[str, str] = {
    "taxonomy": "builder.cli.taxonomy_group:taxonomy",
    "syllabus": "builder.cli.syllabus:syllabus",
    "walk": "builder.cli.walk:walk",
    "templates": "builder.cli.templates:templates",
    "generate": "builder.cli.stages:generate",
    "filter": "builder.cli.stages:filter_stage",
    "quality": "builder.cli.stages:quality_stage",
    "semdedup": "builder.cli.stages:semdedup_stage",
    "assemble": "builder.cli.stages:assemble_stage",
    "llm": "builder.cli.llm:llm",
    "export": "builder.cli.export:export",
    "plan": "builder.cli.build:plan",
    "build": "builder.cli.build:build",
    "report": "builder.cli.build:report",
    "dedup": "builder.cli.dedup:dedup",
    "decontam": "builder.cli.dedup:decontam",
    "review": "builder.cli.review:review",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy_subcommands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_subcommands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            module_name, attr = self.lazy_subcommands[cmd_name].split(":")
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        return super().get_command(ctx, cmd_name)


INTERRUPTED = "interrupted: finished work is saved; rerun the same command to resume"


def debug_enabled() -> bool:
    return os.environ.get("CORPUS_DEBUG", "") not in ("", "0", "false", "no")


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS)
@click.version_option(version=__version__, prog_name="corpus")
@click.option("--debug", is_flag=True, help="Show tracebacks (same as CORPUS_DEBUG=1).")
def cli(debug: bool) -> None:
    """Build textbook-style training corpora from a curated discipline taxonomy.

    \b
    Example:
      corpus taxonomy validate
      corpus plan --config corpus.toml
      corpus build --config corpus.toml --max-cost 5
    """
    if debug:
        os.environ["CORPUS_DEBUG"] = "1"


def report_error(exc: BuilderError) -> None:
    """Print a user error as one line per problem on stderr."""
    for problem in exc.problems:
        line = str(problem)
        if problem.file is None:
            line = f"error: {line}"
        click.echo(line, err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``corpus`` console script and of ``python -m builder``."""
    try:
        rc = cli.main(args=argv, prog_name="corpus", standalone_mode=False)
        # Without standalone mode click *returns* the code of a `raise Exit(n)`.
        if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
            sys.exit(rc)
    except BuilderError as exc:
        if debug_enabled():
            raise
        report_error(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        click.echo(INTERRUPTED, err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 1 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        # `corpus walk | head`: the reader went away; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:
        # A path the user gave that cannot be read or written (permissions, not a directory,
        # disk full...): one line naming it, not a traceback. Other OS errors are bugs.
        if debug_enabled() or not exc.filename:
            raise
        click.echo(
            f"{exc.filename}: {exc.strerror or exc} (check the path and its permissions)",
            err=True,
        )
        sys.exit(2)
