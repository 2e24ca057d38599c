"""The inputs of a build, checked before anything is sent: taxonomy, templates, benchmark
files, and the one rule for which subjects, syllabi and units a config selects."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.config import CorpusConfig
from builder.errors import ConfigError
from builder.records import Unit

if TYPE_CHECKING:  # pragma: no cover
    from builder.taxonomy import Taxonomy
    from builder.templates import TemplateSet
    from builder.walk import Walk

Log = Callable[[str], None]


def _config_line(config: CorpusConfig, section: str, key: str) -> int | None:
    if not config.source:
        return None
    from builder.config import _key_line

    try:
        text = Path(config.source).read_text(encoding="utf-8")
    except OSError:
        return None
    return _key_line(text, (section, key))


def _load_taxonomy(config: CorpusConfig) -> Taxonomy:
    from builder.taxonomy import load_taxonomy

    return load_taxonomy(config.path(config.taxonomy.dir), levels=config.taxonomy.levels)


def _load_templates(config: CorpusConfig) -> TemplateSet:
    from builder.templates import load_templates

    return load_templates(config.path(config.generate.templates_dir))


def node_statuses(config: CorpusConfig) -> tuple[str, ...]:
    """Node statuses a build walks: approved, plus proposed when the config includes them."""
    if config.taxonomy.include_proposed or config.walk.include_proposed:
        return ("approved", "proposed")
    return ("approved",)


def syllabus_statuses(config: CorpusConfig) -> tuple[str, ...]:
    """Syllabus statuses a build walks (see the module docstring)."""
    if config.syllabus.generate_missing or config.walk.include_proposed:
        return ("approved", "proposed")
    return ("approved",)


def _check_subtree(tax: Taxonomy, config: CorpusConfig) -> None:
    import difflib

    for root in config.walk.subtree:
        if root not in tax:
            close = difflib.get_close_matches(root, tax.ids(), n=3, cutoff=0.6)
            raise ConfigError(
                f"[walk] subtree names unknown taxonomy id '{root}'",
                file=config.source,
                line=_config_line(config, "walk", "subtree"),
                hint=f"did you mean {', '.join(close)}?"
                if close
                else "use an id shown by `corpus taxonomy show`",
            )


def selected_subjects(tax: Taxonomy, config: CorpusConfig) -> list[str]:
    """Subjects whose syllabus the configured walk would use, in taxonomy order."""
    from builder.syllabus import subject_of, subjects

    _check_subtree(tax, config)
    statuses = set(node_statuses(config))

    def ok(node_id: str) -> bool:
        return all(n.status in statuses for n in tax.path(node_id))

    chosen: list[str] = []
    for root in config.walk.subtree or [None]:
        found: list[str] = []
        if root is not None:
            subject = subject_of(tax, root)
            if subject is not None:  # a subtree at or below a subject: that subject
                found = [subject.id]
        if not found:
            found = [n.id for n in subjects(tax, under=root)]
        chosen.extend(s for s in found if s not in chosen and ok(s))
    return chosen


def missing_syllabi(tax: Taxonomy, config: CorpusConfig) -> list[str]:
    """Selected subjects without a syllabus file, when the config lets the build make them."""
    from builder.syllabus import syllabus_path

    if not config.syllabus.generate_missing or not config.walk.use_syllabi:
        return []
    return [s for s in selected_subjects(tax, config) if not syllabus_path(tax, s).exists()]


def open_walk(tax: Taxonomy, config: CorpusConfig) -> Walk:
    """The build's walk, lazy (one round when the config sets no bound).

    The one definition of which units a config walks: ``corpus build``, ``corpus walk``,
    ``corpus generate`` and ``corpus plan`` all iterate this.
    """
    from builder.walk import walk_from_settings

    _check_subtree(tax, config)
    w = config.walk
    overrides: dict[str, Any] = {
        "statuses": node_statuses(config),
        "syllabus_statuses": syllabus_statuses(config),
    }
    if w.limit is None and w.token_budget is None and w.rounds is None:
        overrides["rounds"] = 1  # every selected slot once: a build must end
    return walk_from_settings(tax, w, config.syllabus, **overrides)


def walk_units(tax: Taxonomy, config: CorpusConfig) -> tuple[Walk, list[Unit]]:
    """The build's walk and all its units in a list (for small walks: plans, tests)."""
    walk = open_walk(tax, config)
    return walk, list(walk)


def benchmark_files(
    config: CorpusConfig, *, strict: bool = True, log: Log | None = None
) -> list[Path]:
    """The [decontam] benchmark files, checked to exist (a ``ConfigError`` names the key).

    With ``strict=False`` (``corpus plan``, a dry run) a missing file is reported through
    ``log`` and left out instead.
    """
    if not config.decontam.enabled:
        return []
    import glob

    files: list[Path] = []
    for name in config.decontam.benchmarks:
        p = config.path(name)
        if p.is_file():
            files.append(p)
            continue
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if found:
                files.extend(found)
                continue
        matches = sorted(Path(m) for m in glob.glob(str(p)) if Path(m).is_file())
        if not matches:
            if not strict:
                if log is not None:
                    log(f"warning: [decontam] benchmark file not found: {name} (looked at {p})")
                continue
            raise ConfigError(
                f"[decontam] benchmark file not found: {name} (looked at {p})",
                file=config.source,
                line=_config_line(config, "decontam", "benchmarks"),
                hint="fix the path (relative to the config file) or remove it from benchmarks",
            )
        files.extend(matches)
    return files


def check_inputs(
    config: CorpusConfig, *, strict: bool = True, log: Log | None = None
) -> tuple[Taxonomy, TemplateSet, list[Path]]:
    """Load and check the taxonomy, templates, template selection and benchmark files.

    Raises the first user error (a ``BuilderError`` naming file and line) before anything
    is sent or written, so a typo in corpus.toml never costs a request.
    """
    from builder.generate import plan_requests

    tax = _load_taxonomy(config)
    _check_subtree(tax, config)
    templates = _load_templates(config)
    try:
        plan_requests([], templates, config.generate)  # checks templates/audiences/styles
    except ConfigError as exc:
        p = exc.problems[0]
        key = re.match(r"\[generate\] (\w+)", p.message)
        if p.file is not None or key is None or not config.source:
            raise
        line = _config_line(config, "generate", key.group(1))
        raise ConfigError(p.message, file=config.source, line=line, hint=p.hint) from None
    return tax, templates, benchmark_files(config, strict=strict, log=log)


def config_units(
    cfg: CorpusConfig, *, subtree: list[str] | None = None, tax: Taxonomy | None = None
) -> Iterator[Unit]:
    """The units of the config's walk ([walk] and [taxonomy] sections).

    Like ``corpus walk``: with none of limit, token_budget or rounds set, one round (every
    selected topic or session once), so that generation always ends.
    """
    from builder.taxonomy import load_taxonomy

    if tax is None:
        tax = load_taxonomy(cfg.path(cfg.taxonomy.dir), levels=cfg.taxonomy.levels)
    if subtree is not None:
        cfg = cfg.model_copy(update={"walk": cfg.walk.model_copy(update={"subtree": subtree})})
    # The same walk as `corpus build` (statuses, syllabi and bounds), so both make the same units.
    yield from open_walk(tax, cfg)


def find_unit(
    cfg: CorpusConfig, *, unit_id: str | None = None, topic_id: str | None = None
) -> Unit:
    """A unit of the config's walk by id, or the first unit the walker makes for a node.

    An unknown ``topic_id`` is reported as the --topic flag's mistake (with the closest
    taxonomy ids), not as a bad ``[walk] subtree`` in the config.
    """
    import difflib

    from builder.errors import InputError
    from builder.taxonomy import load_taxonomy

    if unit_id is not None:
        for unit in config_units(cfg):
            if unit.unit_id == unit_id:
                return unit
        raise InputError(
            f"unit '{unit_id}' is not in this config's walk",
            hint="`corpus walk --config ...` lists the unit ids; or use --topic ID",
        )
    if topic_id is None:
        raise InputError("give --unit UNIT_ID or --topic ID")
    tax = load_taxonomy(cfg.path(cfg.taxonomy.dir), levels=cfg.taxonomy.levels)
    if topic_id not in tax:
        ids = [node.id for node in tax]
        close = difflib.get_close_matches(topic_id, ids, n=3)
        hint = (
            f"did you mean {', '.join(close)}?" if close else "`corpus taxonomy show` lists the ids"
        )
        raise InputError(f"--topic {topic_id}: unknown taxonomy id", hint=hint)
    for unit in config_units(cfg, subtree=[topic_id], tax=tax):
        if topic_id in (unit.topic, unit.subject, unit.discipline) or topic_id in (
            unit.taxonomy_path.split("/")
        ):
            return unit
    raise InputError(
        f"the walker makes no unit for node '{topic_id}'",
        hint="check the id with `corpus taxonomy show`, and that the node is approved",
    )
