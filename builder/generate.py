"""Generation: walker units x templates -> a request plan -> the LLM -> raw document rows.

The plan is deterministic: for each unit, ``documents_per_unit`` (template, audience, style)
draws seeded by the unit id (not the full cross product), each a ``ChatRequest`` whose id
is ``sha256(unit_id, template, audience, style, sample_index)`` and whose metadata carries
the provenance of the document row. Exercises then go through transform templates
(Evol-Instruct: a harder exercise at the next difficulty level) in further waves, since a
transform needs its source exercise first.

The generate stage (builder.stages.generate) sends these requests and saves one row per
result with ``result_row``: documents *and* truncated, invalid or failed results with their
error, so nothing is dropped silently (builder.filters decides what is kept, and records why
the rest is rejected). A rerun sends only requests that have no finished row with the same
``prompt_sha256``.

Row fields: the document columns of builder.records.DOCUMENT_COLUMNS (``n_tokens`` and
``dup_cluster`` are left to later stages) plus

- ``exercise_type``: "code" | "quantitative" | "conceptual" for ``kind == "exercise"``
- ``structured``: the parsed JSON output of exercise templates, with exactly the fields of
  builder.templates.REQUIRED_FIELDS: code -> ``problem``, ``signature``, ``tests``
  (assert-based Python), ``solution`` (reference code); quantitative -> ``problem``,
  ``worked_solution``, ``final_answer`` (a number or a sympy-parsable expression);
  conceptual -> ``problem``, ``answer``. ``text`` is the same exercise as Markdown.
- ``status`` (ok | length | invalid | failed), ``error``, ``request_id``, ``unit_id``,
  ``sample_index``, ``parent_id``/``evolution_step``/``evolution``/``source_template`` for
  evolved exercises, ``prompt_sha256`` (what resume compares), ``cost``, ``cached``.
- ``reasoning`` / ``reasoning_tokens`` (cl100k): a reasoning model's trace, apart from
  ``text`` and ``structured`` (which hold the answer only); None and 0 when there is none.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from builder.errors import ConfigError, TemplateError
from builder.llm.base import LLM
from builder.llm.endpoint import canonical_with_messages
from builder.records import ChatRequest, ChatResult, Unit, sha256_hex
from builder.settings.generate import GenerateSettings
from builder.templates import (
    Template,
    TemplateSet,
    harder,
    render_structured,
    seeded_random,
    structured_problem,
)
from builder.tokens import count_tokens_one

#: Result statuses that are final: a rerun does not resend them (failed ones are retried).
FINISHED_STATUSES = frozenset({"ok", "length", "invalid"})


# --------------------------------------------------------------------------- ids


def request_id(unit_id: str, template: str, audience: str, style: str, sample_index: int) -> str:
    """The stable id of a generation request (what resume keys on)."""
    key = {"unit": unit_id, "template": template, "audience": audience, "style": style}
    return sha256_hex({**key, "sample": sample_index})[:24]


def transform_request_id(parent_id: str, template: str, step: int) -> str:
    """The stable id of a transform request applied to document ``parent_id``."""
    return sha256_hex({"parent": parent_id, "template": template, "step": step})[:24]


def document_id(req_id: str, sample_index: int) -> str:
    """The stable id of the document a request produces."""
    return hashlib.sha256(f"{req_id}:{sample_index}".encode()).hexdigest()[:32]


def sampling_seed(req_id: str, seed: int) -> int:
    """The sampling seed sent with a request: fixed per request, changes with [generate] seed."""
    return int(hashlib.sha256(f"{seed}:{req_id}".encode()).hexdigest()[:8], 16) % 2**31


def prompt_sha256(request: ChatRequest, model: str, canonical_messages: str | None = None) -> str:
    """Hash of what decides a request's output: model, messages, params, schema, sample.
    Taken from a ``PreparedRequest`` that carries it for ``model``; ``canonical_messages``:
    the canonical JSON of the messages when the caller has it (``messages_json``)."""
    made = getattr(request, "prompt_sha256", None)
    if made is not None and made[0] == model:
        return made[1]
    material = {
        "model": model,
        "messages": list(request.messages),
        "params": request.params,
        "schema": request.schema,
        "sample_index": request.sample_index,
    }
    if canonical_messages is None:
        return sha256_hex(material)
    return sha256_hex(canonical_with_messages(material, canonical_messages))


# --------------------------------------------------------------------------- plan


def _selected(templates: TemplateSet, settings: GenerateSettings) -> list[Template]:
    """The templates named in settings (checked), else all of them; system ones excluded."""
    for name in settings.templates:
        if name not in templates:
            raise ConfigError(
                f"[generate] templates names unknown template '{name}'",
                hint="known: " + ", ".join(t.name for t in templates if t.kind != "system"),
            )
        if templates[name].kind == "system":
            raise ConfigError(
                f"[generate] templates lists '{name}', a system template",
                hint="system templates are used through a template's `system:` key",
            )
    for key, known in (("audiences", templates.audiences), ("styles", templates.styles)):
        for value in getattr(settings, key):
            if value not in known:
                raise ConfigError(
                    f"[generate] {key} names unknown {key[:-1]} '{value}'",
                    hint=f"known: {', '.join(known)} (add one in {templates.root})",
                )
    names = settings.templates or [t.name for t in templates]
    return [templates[n] for n in names if templates[n].kind != "system"]


def _choices(
    templates: TemplateSet, template: Template, settings: GenerateSettings
) -> tuple[list[str], list[str]]:
    """Audiences and styles a template may be drawn with under these settings."""
    audiences = templates.audiences_for(template)
    styles = templates.styles_for(template)
    if settings.audiences:
        audiences = [a for a in audiences if a in settings.audiences]
    if settings.styles:
        styles = [s for s in styles if s in settings.styles]
    return audiences, styles


def _params(template_params: dict[str, Any], settings: GenerateSettings, seed: int) -> dict:
    params = dict(template_params)
    for key in ("temperature", "top_p", "max_tokens"):
        value = getattr(settings, key)
        if value is not None:
            params[key] = value
    params["seed"] = seed
    return params


def _base_metadata(unit: Unit) -> dict[str, Any]:
    return {
        "unit_id": unit.unit_id,
        "discipline": unit.discipline,
        "subject": unit.subject,
        "topic": unit.topic,
        "taxonomy_path": unit.taxonomy_path,
        "session": unit.session,
        "concepts": list(unit.concepts),
        "difficulty": unit.difficulty,
    }


def build_request(
    templates: TemplateSet,
    template: Template,
    unit: Unit,
    *,
    audience: str,
    style: str,
    sample_index: int,
    settings: GenerateSettings,
) -> ChatRequest:
    """The request of one (unit, template, audience, style, sample) with its provenance."""
    rid = request_id(unit.unit_id, template.name, audience, style, sample_index)
    opener = templates.pick_opener(template, rid)
    rendered = templates.render(
        template.name,
        unit,
        audience=audience,
        style=style,
        sample_index=sample_index,
        opener=opener,
    )
    seed = sampling_seed(rid, settings.seed)
    output, _schema = templates.output_of(template)
    metadata = {
        **_base_metadata(unit),
        "kind": template.kind,
        "exercise_type": template.exercise_type,
        "audience": audience,
        "style": style,
        "template": template.name,
        "template_sha256": template.sha256,
        "source_template": template.name,
        "output": output,
        "seed": seed,
        "sample_index": sample_index,
        "parent_id": None,
        "evolution_step": 0,
        "evolution": None,
    }
    return ChatRequest(
        id=rid,
        messages=rendered.messages,
        params=_params(rendered.params, settings, seed),
        schema=rendered.schema,
        sample_index=sample_index,
        metadata=metadata,
    )


def _weighted_order(rng: random.Random, items: list[Template]) -> list[Template]:
    """A random order where heavier templates tend to come first (Efraimidis-Spirakis)."""
    keyed = [(rng.random() ** (1.0 / t.front.weight), i, t) for i, t in enumerate(items)]
    return [t for _k, _i, t in sorted(keyed, key=lambda x: (-x[0], x[1]))]


def _draw(rng: random.Random, cycle: list[str], allowed: list[str]) -> str:
    """Next allowed value of a shuffled cycle, refilled when used up: even coverage."""
    for i, value in enumerate(cycle):
        if value in allowed:
            return cycle.pop(i)
    fresh = rng.sample(allowed, len(allowed))
    cycle.extend(fresh[1:])
    return fresh[0]


def plan_unit(
    unit: Unit, templates: TemplateSet, settings: GenerateSettings, generators: list[Template]
) -> list[ChatRequest]:
    """The requests of one unit: ``documents_per_unit`` seeded draws.

    Templates are drawn in rounds without replacement (weighted by front-matter ``weight``),
    so ``documents_per_unit`` equal to the number of templates uses each once; audience and
    style are drawn uniformly from what the template and the settings allow. A repeated
    (template, audience, style) gets the next ``sample_index``.
    """
    eligible = []
    for t in generators:
        if t.front.disciplines and unit.discipline not in t.front.disciplines:
            continue
        audiences, styles = _choices(templates, t, settings)
        if audiences and styles:
            eligible.append((t, audiences, styles))
    if not eligible:
        return []
    rng = seeded_random("plan", settings.seed, unit.unit_id, unit.seed)
    by_name = {t.name: (t, a, s) for t, a, s in eligible}
    counts: Counter[tuple[str, str, str]] = Counter()
    requests = []
    order: list[Template] = []
    audience_cycle: list[str] = []
    style_cycle: list[str] = []
    for _ in range(settings.documents_per_unit):
        if not order:
            order = _weighted_order(rng, [t for t, _a, _s in eligible])
        template = order.pop(0)
        _t, audiences, styles = by_name[template.name]
        audience = _draw(rng, audience_cycle, audiences)
        style = _draw(rng, style_cycle, styles)
        key = (template.name, audience, style)
        sample_index = counts[key]
        counts[key] += 1
        requests.append(
            build_request(
                templates,
                template,
                unit,
                audience=audience,
                style=style,
                sample_index=sample_index,
                settings=settings,
            )
        )
    return requests


def plan_requests(
    units: Iterable[Unit], templates: TemplateSet, settings: GenerateSettings
) -> list[ChatRequest]:
    """The first-wave plan: every unit's requests, in unit order (see ``plan_unit``)."""
    generators = [t for t in _selected(templates, settings) if t.kind != "transform"]
    if not generators:
        raise ConfigError(
            "no generation template selected",
            hint="[generate] templates must name at least one section or exercise template",
        )
    requests: list[ChatRequest] = []
    n_units = 0
    for unit in units:
        n_units += 1
        requests.extend(plan_unit(unit, templates, settings, generators))
    if n_units and not requests:
        raise ConfigError(
            f"no template can be drawn for any of the {n_units} unit(s)",
            hint="check [generate] audiences/styles against the templates' audiences, "
            "styles and disciplines",
        )
    return requests


def plan_transforms(
    parents: Iterable[dict[str, Any]],
    units: dict[str, Unit],
    templates: TemplateSet,
    settings: GenerateSettings,
    step: int,
) -> list[ChatRequest]:
    """Requests that evolve each usable exercise row of ``parents`` one step harder.

    A parent qualifies when its status is ok, it is an exercise with valid structured
    output, it sits at ``step - 1`` (and, past step 1, came from the same transform), and
    the transform applies to its exercise type for at least ``step`` steps.
    """
    if not settings.evolve:
        return []
    transforms = [t for t in _selected(templates, settings) if t.kind == "transform"]
    requests = []
    for row in parents:
        if row.get("status") != "ok" or row.get("kind") != "exercise":
            continue
        if (row.get("evolution_step") or 0) != step - 1:
            continue
        exercise_type = row.get("exercise_type")
        structured = row.get("structured")
        if structured_problem(exercise_type, structured) is not None:
            continue
        unit = units.get(row.get("unit_id", ""))
        source = row.get("source_template")
        if unit is None or source not in templates:
            continue
        for t in transforms:
            spec = t.front.transform_of
            if spec is None or (spec.exercise_types and exercise_type not in spec.exercise_types):
                continue
            steps = settings.evolution_steps if settings.evolution_steps is not None else spec.steps
            if step > steps or (step > 1 and row.get("template") != t.name):
                continue
            requests.append(transform_request(templates, t, row, unit, step, source, settings))
    return requests


def transform_request(
    templates: TemplateSet,
    template: Template,
    parent: dict[str, Any],
    unit: Unit,
    step: int,
    source: str,
    settings: GenerateSettings,
) -> ChatRequest:
    """The request that evolves exercise row ``parent`` (of template ``source``) one step.

    ``parent`` needs id, exercise_type, structured, audience, style and difficulty. The
    Evol-Instruct operation is drawn from the transform's operations, seeded by the id;
    the new exercise's difficulty is ``harder(parent difficulty)``.
    """
    spec = template.front.transform_of
    if spec is None:
        raise TemplateError(f"template '{template.name}' is not a transform", file=template.path)
    rid = transform_request_id(parent["id"], template.name, step)
    op_ids = sorted(spec.operations)
    op = op_ids[seeded_random(rid, "evolution").randrange(len(op_ids))]
    exercise_type = parent["exercise_type"]
    structured = dict(parent["structured"])
    source_difficulty = parent.get("difficulty") or unit.difficulty
    target = harder(source_difficulty)
    extra = {
        "exercise": {**structured, "text": render_structured(exercise_type, structured)},
        "evolution": {"id": op, "instruction": spec.operations[op]},
        "step": step,
        "source_difficulty": source_difficulty,
        "target_difficulty": target,
        "exercise_type": exercise_type,
    }
    rendered = templates.render(
        template.name,
        unit,
        audience=parent["audience"],
        style=parent["style"],
        sample_index=0,
        extra=extra,
        source=source,
    )
    seed = sampling_seed(rid, settings.seed)
    output, _schema = templates.output_of(template, templates[source])
    metadata = {
        **_base_metadata(unit),
        "difficulty": target,
        "kind": "exercise",
        "exercise_type": exercise_type,
        "audience": parent["audience"],
        "style": parent["style"],
        "template": template.name,
        "template_sha256": template.sha256,
        "source_template": source,
        "output": output,
        "seed": seed,
        "sample_index": 0,
        "parent_id": parent["id"],
        "evolution_step": step,
        "evolution": op,
    }
    return ChatRequest(
        id=rid,
        messages=rendered.messages,
        params=_params(rendered.params, settings, seed),
        schema=rendered.schema,
        sample_index=0,
        metadata=metadata,
    )


# --------------------------------------------------------------------------- rows


def _parse_json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text, strict=False)  # as the engine: raw newlines in strings are fine
    except json.JSONDecodeError:
        return None


def result_row(request: ChatRequest, result: ChatResult, llm: LLM) -> dict[str, Any]:
    """The raw document row of one result (failures included, with their error)."""
    md = request.metadata
    text = (result.text or "").strip()
    structured = None
    if md.get("output") == "json":
        structured = result.parsed if isinstance(result.parsed, dict) else _parse_json(text)
        if structured_problem(md.get("exercise_type"), structured) is None:
            text = render_structured(md["exercise_type"], structured)
    model = result.model or llm.model_name
    return {
        "id": document_id(request.id, request.sample_index),
        "text": text,
        "kind": md["kind"],
        "discipline": md["discipline"],
        "subject": md["subject"],
        "topic": md["topic"],
        "taxonomy_path": md["taxonomy_path"],
        "session": md["session"],
        "concepts": list(md["concepts"]),
        "audience": md["audience"],
        "style": md["style"],
        "difficulty": md["difficulty"],
        "template": md["template"],
        "template_sha256": md["template_sha256"],
        "model": model,
        "seed": md["seed"],
        "request_sha256": result.request_sha256 or llm.request_sha256(request),
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "n_tokens": None,
        "verified": None,
        "dup_cluster": None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exercise_type": md.get("exercise_type"),
        "structured": structured,
        "status": result.status,
        "error": result.error,
        "request_id": request.id,
        "unit_id": md["unit_id"],
        "sample_index": request.sample_index,
        "parent_id": md.get("parent_id"),
        "evolution_step": md.get("evolution_step", 0),
        "evolution": md.get("evolution"),
        "source_template": md.get("source_template"),
        "output": md.get("output"),
        "prompt_sha256": prompt_sha256(request, llm.model_name),
        "cost": result.cost,
        "cached": result.cached,
        # the model's reasoning trace, kept apart from the answer (builder.reasoning)
        "reasoning": result.reasoning,
        "reasoning_tokens": count_tokens_one(result.reasoning) if result.reasoning else 0,
    }
