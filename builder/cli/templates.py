"""``corpus templates check|render``: check prompt templates and show what they send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder.cli.options import config_option, flag_path, taxonomy_option

if TYPE_CHECKING:  # pragma: no cover
    from builder.templates import TemplateSet

templates_dir_option = click.option(
    "--templates",
    "templates_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Templates directory (default: the config's [generate] templates_dir, else templates/).",
)


def _has_content(path: Path) -> bool:
    """Whether a YAML file has anything besides blank lines, comments and ``---``."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return any(
        ln.strip() and not ln.lstrip().startswith("#") and ln.strip() not in ("---", "...")
        for ln in text.splitlines()
    )


def load_template_set(directory: Path) -> TemplateSet:
    """Load and check the templates of ``directory``; raise every problem as a user error.

    Unlike an ``assert``, a set that cannot be built without a reported problem (e.g. an
    empty ``_audiences.yaml``) is still turned into a file:line error naming the file.
    """
    from builder.errors import Problem, TemplateError, ValidationError
    from builder.templates import AUDIENCES_FILE, STYLES_FILE, check_templates

    tset, problems = check_templates(directory)
    if problems:
        if len(problems) == 1:
            p = problems[0]
            raise TemplateError(p.message, file=p.file, line=p.line, hint=p.hint)
        raise ValidationError(problems, summary=f"{len(problems)} template problem(s)")
    if tset is None:
        empty = [
            Problem(
                "empty shared file: expected a mapping of id -> {name, description, guidance}",
                directory / name,
                1,
                hint="add at least one entry; see templates/README.md",
            )
            for name in (AUDIENCES_FILE, STYLES_FILE)
            if (directory / name).exists() and not _has_content(directory / name)
        ]
        if len(empty) > 1:
            raise ValidationError(empty, summary=f"{len(empty)} template problem(s)")
        p = (
            empty[0]
            if empty
            else Problem(
                "templates could not be loaded",
                directory,
                hint=f"check {AUDIENCES_FILE} and {STYLES_FILE}",
            )
        )
        raise TemplateError(p.message, file=p.file, line=p.line, hint=p.hint)
    return tset


@click.group()
def templates() -> None:
    """Check prompt templates, or print the exact messages one would send.

    \b
    Example:
      corpus templates check
      corpus templates render section --topic calculus-limits-and-continuity --audience college
    """


@templates.command("check")
@templates_dir_option
@config_option
def check_cmd(templates_dir: str | None, config_path: str | None) -> None:
    """Check every template: front-matter, Jinja syntax, variables, sandboxed renders.

    Every template is rendered with sample units, every audience and every style in the
    sandbox, so undefined variables and unsafe attribute access (e.g. ``__class__``) are
    reported as file:line problems (exit code 2).

    \b
    Example:
      corpus templates check --templates templates/
    """
    from builder.config import load_config

    cfg = load_config(config_path, {"generate.templates_dir": flag_path(templates_dir)})
    directory = Path(templates_dir) if templates_dir else cfg.path(cfg.generate.templates_dir)
    tset = load_template_set(directory)
    kinds: dict[str, int] = {}
    for t in tset:
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    click.echo(
        f"ok: {len(tset)} templates ({summary}), {len(tset.audiences)} audiences, "
        f"{len(tset.styles)} styles in {directory}"
    )


@templates.command("render")
@click.argument("name")
@click.option("--unit", "unit_id", default=None, help="A unit id from `corpus walk`.")
@click.option("--topic", "topic_id", default=None, help="A taxonomy node id (first unit of it).")
@click.option(
    "--audience", default=None, help="Audience id (default: a draw seeded by unit and template)."
)
@click.option(
    "--style", default=None, help="Style id (default: a draw seeded by unit and template)."
)
@click.option("--sample-index", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--exercise",
    "exercise_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="For transforms: a JSON file with the exercise's fields (default: a sample).",
)
@templates_dir_option
@taxonomy_option
@config_option
def render_cmd(
    name: str,
    unit_id: str | None,
    topic_id: str | None,
    audience: str | None,
    style: str | None,
    sample_index: int,
    exercise_file: str | None,
    templates_dir: str | None,
    taxonomy_dir: str | None,
    config_path: str | None,
) -> None:
    """Print, as JSON, the exact request template NAME would send for a unit.

    The unit comes from the config's walk (--unit ID) or is the first unit of a taxonomy
    node (--topic ID). Audience and style default to what the generation plan draws.

    \b
    Example:
      corpus templates render section --topic calculus --audience high_school --style textbook
      corpus templates render evolve_exercise --topic calculus-derivatives --exercise ex.json
    """
    from builder.config import load_config
    from builder.errors import InputError
    from builder.generate import build_request, transform_request
    from builder.run.inputs import find_unit
    from builder.templates import SAMPLE_EXERCISES, seeded_random

    if (unit_id is None) == (topic_id is None):
        raise click.UsageError("give exactly one of --unit UNIT_ID or --topic ID")
    cfg = load_config(
        config_path,
        {
            "generate.templates_dir": flag_path(templates_dir),
            "taxonomy.dir": flag_path(taxonomy_dir),
        },
    )
    tset = load_template_set(cfg.path(cfg.generate.templates_dir))
    template = tset[name]
    if template.kind == "system":
        raise click.UsageError(f"'{name}' is a system template: render a template that uses it")
    unit = find_unit(cfg, unit_id=unit_id, topic_id=topic_id)
    audiences = tset.audiences_for(template)
    styles = tset.styles_for(template)
    rng = seeded_random("render", unit.unit_id, name)
    audience = audience or rng.choice(audiences)
    style = style or rng.choice(styles)
    if template.kind == "transform":
        spec = template.front.transform_of
        types = (spec.exercise_types if spec else None) or list(SAMPLE_EXERCISES)
        if exercise_file:
            try:
                exercise = json.loads(Path(exercise_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read exercise JSON: {exc}", file=exercise_file) from None
            if not isinstance(exercise, dict):
                raise InputError("exercise JSON must be an object", file=exercise_file)
            exercise_type = exercise.pop("exercise_type", None) or types[0]
        else:
            exercise_type = types[0]
            exercise = dict(SAMPLE_EXERCISES[exercise_type])
        sources = [
            t.name for t in tset if t.kind == "exercise" and t.exercise_type == exercise_type
        ]
        if not sources:
            raise click.UsageError(f"no exercise template of type '{exercise_type}' to evolve")
        parent = {
            "id": f"render:{unit.unit_id}",
            "exercise_type": exercise_type,
            "structured": exercise,
            "audience": audience,
            "style": style,
            "difficulty": unit.difficulty,
        }
        request = transform_request(tset, template, parent, unit, 1, sources[0], cfg.generate)
    else:
        request = build_request(
            tset,
            template,
            unit,
            audience=audience,
            style=style,
            sample_index=sample_index,
            settings=cfg.generate,
        )
    click.echo(
        json.dumps(
            {
                "id": request.id,
                "template": name,
                "unit_id": unit.unit_id,
                "messages": list(request.messages),
                "params": request.params,
                "schema": request.schema,
                "metadata": request.metadata,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
