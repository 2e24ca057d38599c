"""``corpus syllabus ...``: generate, list, show and approve GLAN-style subject syllabi."""

from __future__ import annotations

import json

import click

from builder.cli.options import cache_dir_option, config_option, max_cost_option, taxonomy_option


def _context(taxonomy_dir: str | None, config_path: str | None):
    from builder.cli.taxonomy import resolve_taxonomy_dir
    from builder.config import load_config
    from builder.taxonomy import load_taxonomy

    cfg = load_config(config_path)
    tax = load_taxonomy(resolve_taxonomy_dir(taxonomy_dir, config_path), levels=cfg.taxonomy.levels)
    return cfg, tax


@click.group()
def syllabus() -> None:
    """Syllabi per subject: class sessions with learning goals and key concepts (GLAN).

    Files live at <taxonomy>/<discipline>/syllabi/<subject>.yaml; they are proposed until
    a curator approves them, and builds use approved syllabi only (unless told otherwise).

    \b
    Example:
      corpus syllabus generate calculus
      corpus syllabus show calculus
      corpus syllabus approve calculus
    """


@syllabus.command("generate")
@click.argument("subject_ids", nargs=-1, metavar="[ID...]")
@config_option
@taxonomy_option
@cache_dir_option
@max_cost_option
@click.option("--sessions", type=click.IntRange(1, 60), default=None, help="Sessions per syllabus.")
@click.option("--force", is_flag=True, help="Overwrite approved or curator-edited syllabi too.")
@click.option("--missing", "only_missing", is_flag=True, help="Only subjects without a file.")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=0,
    help="Sample index: another number asks the model for a different syllabus.",
)
@click.option("--include-proposed", is_flag=True, help="With no IDs: also proposed subjects.")
def generate_cmd(
    subject_ids: tuple[str, ...],
    config_path: str | None,
    taxonomy_dir: str | None,
    cache_dir: str | None,
    max_cost: float | None,
    sessions: int | None,
    force: bool,
    only_missing: bool,
    sample: int,
    include_proposed: bool,
) -> None:
    """Ask the model for the syllabus of each subject (default: every approved subject).

    Each syllabus has --sessions class sessions ordered basic to advanced, each with a title,
    learning goals and key concepts, consistent with the subject's topics and prerequisites.
    Files are written as `status: proposed`. A syllabus that is approved or that a curator
    edited is never overwritten without --force. Invalid replies are retried with a new
    sample; subjects that still fail are listed and the exit code is 2. Replies are cached,
    so a plain rerun gives the same replies (failures included); --sample N asks for
    different ones (the failure message names the next N to use).

    \b
    Example:
      corpus syllabus generate calculus linear-algebra --sessions 12
      corpus syllabus generate --missing
    """
    from builder.errors import ValidationError
    from builder.llm import open_engine
    from builder.llm.engine import resolve_cache_dir
    from builder.settings.syllabus import SyllabusSettings
    from builder.syllabus import generate_syllabi

    cfg, tax = _context(taxonomy_dir, config_path)
    settings = cfg.syllabus
    if sessions is not None:
        settings = SyllabusSettings.model_validate({**settings.model_dump(), "sessions": sessions})
    statuses = ("approved", "proposed") if include_proposed else ("approved",)
    cache = resolve_cache_dir(cache_dir, cfg.llm, root=cfg.root)
    with open_engine(cfg.llm, cache_dir=cache) as llm:
        report = generate_syllabi(
            tax,
            llm,
            list(subject_ids) or None,
            settings,
            force=force,
            only_missing=only_missing,
            sample=sample,
            statuses=statuses,
            strict=False,
            max_cost=max_cost,
        )
    for outcome in report.outcomes:
        if outcome.action != "failed":
            click.echo(str(outcome))
    click.echo(
        f"{len(report.written)} written, {len(report.kept)} kept, {len(report.failed)} failed",
        err=True,
    )
    if report.written:
        click.echo("next: review the files, then `corpus syllabus approve ID...`", err=True)
    if report.failed:
        raise ValidationError(report.problems())


@syllabus.command("list")
@config_option
@taxonomy_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def list_cmd(config_path: str | None, taxonomy_dir: str | None, as_json: bool) -> None:
    """List every subject with the state of its syllabus (missing/proposed/approved/edited).

    \b
    Example:
      corpus syllabus list
    """
    from builder.errors import ValidationError
    from builder.syllabus import load_syllabus, subjects, syllabus_path

    cfg, tax = _context(taxonomy_dir, config_path)
    for node in subjects(tax):
        try:
            syl = load_syllabus(tax, node.id, cfg.syllabus)
        except ValidationError as exc:
            state, n = f"invalid ({len(exc.problems)} problem(s))", 0
        else:
            if syl is None:
                state, n = "missing", 0
            else:
                state = syl.status + (", edited" if syl.edited else "")
                n = len(syl.sessions)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "subject": node.id,
                        "path": tax.path_ids(node.id),
                        "state": state,
                        "sessions": n,
                        "file": str(syllabus_path(tax, node.id)),
                    }
                )
            )
        else:
            click.echo(f"{tax.path_ids(node.id)}\t{state}\t{n} sessions")


@syllabus.command("show")
@click.argument("subject_id", metavar="ID")
@config_option
@taxonomy_option
@click.option("--yaml", "as_yaml", is_flag=True, help="Print the file as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def show_cmd(
    subject_id: str, config_path: str | None, taxonomy_dir: str | None, as_yaml: bool, as_json: bool
) -> None:
    """Print one subject's syllabus: sessions in order, with goals and key concepts.

    \b
    Example:
      corpus syllabus show calculus
      corpus syllabus show calculus --yaml
    """
    from builder.errors import TaxonomyError
    from builder.syllabus import (
        is_subject,
        load_syllabus,
        render_syllabus,
        subject_of,
        syllabus_path,
    )

    cfg, tax = _context(taxonomy_dir, config_path)
    node = tax[subject_id]  # unknown ids get a did-you-mean
    if not is_subject(tax, node.id):
        subject = subject_of(tax, node.id)
        raise TaxonomyError(
            f"{node.id!r} is not a subject (level {node.level!r}); syllabi belong to subjects",
            file=node.file,
            line=node.line,
            hint=f"its subject is {subject.id!r}: `corpus syllabus show {subject.id}`"
            if subject is not None
            else "`corpus syllabus list` lists the subjects",
        )
    syl = load_syllabus(tax, subject_id, cfg.syllabus)
    if syl is None:
        raise TaxonomyError(
            f"{subject_id!r} has no syllabus ({syllabus_path(tax, subject_id)} does not exist)",
            hint=f"generate one with `corpus syllabus generate {subject_id}`",
        )
    if as_yaml and syl.file is not None:
        click.echo(syl.file.read_text(encoding="utf-8"), nl=False)
    elif as_json:
        click.echo(
            json.dumps(
                {
                    "subject": syl.subject,
                    "discipline": syl.discipline,
                    "status": syl.status,
                    "edited": syl.edited,
                    "generated_by": syl.generated_by,
                    "sessions": [s.to_dict() for s in syl.sessions],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        click.echo(render_syllabus(syl, tax), nl=False)


@syllabus.command("approve")
@click.argument("subject_ids", nargs=-1, required=True, metavar="ID...")
@config_option
@taxonomy_option
def approve_cmd(subject_ids: tuple[str, ...], config_path: str | None, taxonomy_dir: str | None):
    """Mark syllabi approved so that builds use them (the file is validated first).

    Comments and edits in the file are kept; only `status:` changes.

    \b
    Example:
      corpus syllabus approve calculus linear-algebra
    """
    from builder.syllabus import approve_syllabus

    cfg, tax = _context(taxonomy_dir, config_path)
    for sid in subject_ids:
        path = approve_syllabus(tax, sid, cfg.syllabus)
        click.echo(f"approved {path}")
