"""Prompt templates: discovery, front-matter, checks and sandboxed rendering.

A template is ``templates/<name>.j2``: YAML front-matter between two ``---`` lines, then a
Jinja body that renders the *user* message. The front-matter says what the template makes
(``kind``), for whom (``audiences``, ``styles``), how to sample (``params``), and what comes
back (``output: text`` or ``output: json`` with a JSON ``schema``). Audiences, styles and
document openers are shared by every template and live in one place each:
``templates/_audiences.yaml``, ``templates/_styles.yaml`` and ``templates/_openers.yaml``, so
adding an audience is one YAML entry.

Bodies render in a ``jinja2.sandbox.SandboxedEnvironment`` with ``StrictUndefined``: a typo in
a variable name or an unsafe attribute (``unit.__class__``) is an error with ``file:line``,
never a silently empty prompt. ``check_templates`` runs every check (front-matter schema,
syntax, undeclared variables, unsafe attributes, and a render of every template with sample
units) and returns all problems at once; ``load_templates`` raises them.

Structured exercise outputs are the contract with verification (builder.verify): see
``REQUIRED_FIELDS``. A JSON-output exercise template must require these fields in its schema.
"""

from __future__ import annotations

import hashlib
import random
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jinja2 import FunctionLoader, StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from builder.errors import Problem, TemplateError
from builder.errors import ValidationError as BuilderValidationError
from builder.records import Unit

Kind = Literal["section", "exercise", "solution", "transform", "system"]
ExerciseType = Literal["code", "quantitative", "conceptual"]

#: Fields a structured exercise must carry, by ``exercise_type``. builder.verify reads these
#: from ``doc["structured"]``: code exercises run ``solution`` then ``tests`` (assert-based
#: Python) in a sandbox; quantitative exercises check ``final_answer`` (a number or a
#: sympy-parsable expression) against the ``worked_solution`` or a second sample.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "code": ("problem", "signature", "tests", "solution"),
    "quantitative": ("problem", "worked_solution", "final_answer"),
    "conceptual": ("problem", "answer"),
}

AUDIENCES_FILE = "_audiences.yaml"
STYLES_FILE = "_styles.yaml"
OPENERS_FILE = "_openers.yaml"
SHARED_FILES = (AUDIENCES_FILE, STYLES_FILE, OPENERS_FILE)

#: Variables every template may use: the Unit's fields, the Unit itself, and the request's.
UNIT_VARIABLES: frozenset[str] = frozenset(Unit.__dataclass_fields__)
REQUEST_VARIABLES: frozenset[str] = frozenset(
    {"unit", "audience", "style", "opener", "sample_index", "kind", "exercise_type", "template"}
)
#: Jinja's own globals (range, dict, namespace, ...): usable, sandboxed like the rest.
JINJA_GLOBALS: frozenset[str] = frozenset({"range", "dict", "namespace", "cycler", "joiner"})
#: Extra variables of ``kind: transform`` templates (the exercise being evolved).
TRANSFORM_VARIABLES: frozenset[str] = frozenset(
    {"exercise", "evolution", "step", "source_difficulty", "target_difficulty"}
)


#: Difficulty labels from easy to hard; a transform moves an exercise up this ladder.
DIFFICULTY_LADDER: tuple[str, ...] = ("basic", "intermediate", "advanced", "expert")
DIFFICULTY_ALIASES: dict[str, str] = {
    "introductory": "basic",
    "beginner": "basic",
    "elementary": "basic",
    "easy": "basic",
    "medium": "intermediate",
    "hard": "advanced",
}


def harder(difficulty: str | None, steps: int = 1) -> str:
    """The difficulty label ``steps`` rungs above ``difficulty``.

    Labels on the ladder move up it ("basic" -> "intermediate"); past the top, or for a
    label not on the ladder, a counter is appended ("expert" -> "expert+1", "x+1" -> "x+2"),
    so the label always increases and stays readable.
    """
    label = (difficulty or "intermediate").strip().lower()
    extra = 0
    m = re.fullmatch(r"(.+?)\+(\d+)", label)
    if m:
        label, extra = m.group(1), int(m.group(2))
    canon = DIFFICULTY_ALIASES.get(label, label)
    if canon in DIFFICULTY_LADDER and not extra:
        i = DIFFICULTY_LADDER.index(canon) + steps
        if i < len(DIFFICULTY_LADDER):
            return DIFFICULTY_LADDER[i]
        return f"{DIFFICULTY_LADDER[-1]}+{i - len(DIFFICULTY_LADDER) + 1}"
    return f"{canon}+{extra + steps}"


def _unfence(code: str) -> str:
    """Code without a surrounding Markdown fence (models often add one inside JSON)."""
    text = code.strip()
    m = re.fullmatch(r"```[\w+-]*\n(.*?)\n?```", text, flags=re.S)
    return m.group(1).strip("\n") if m else text


def structured_field(structured: Mapping[str, Any], name: str) -> str:
    """A field of a structured exercise as clean text (code fields lose Markdown fences)."""
    value = structured.get(name)
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if name in ("signature", "tests", "solution"):
        return _unfence(text)
    return text.strip()


def structured_problem(exercise_type: str | None, structured: Any) -> str | None:
    """Why ``structured`` is not a usable exercise of ``exercise_type``, or None if it is."""
    if exercise_type not in REQUIRED_FIELDS:
        return f"unknown exercise_type {exercise_type!r}"
    if not isinstance(structured, Mapping):
        return "output is not a JSON object"
    missing = [f for f in REQUIRED_FIELDS[exercise_type] if f not in structured]
    if missing:
        return "missing field(s): " + ", ".join(missing)
    bad = [
        f
        for f in REQUIRED_FIELDS[exercise_type]
        if not isinstance(structured[f], str | int | float) or isinstance(structured[f], bool)
    ]
    if bad:
        return "field(s) not text: " + ", ".join(bad)
    empty = [f for f in REQUIRED_FIELDS[exercise_type] if not structured_field(structured, f)]
    if empty:
        return "empty field(s): " + ", ".join(empty)
    return None


def render_structured(exercise_type: str, structured: Mapping[str, Any]) -> str:
    """A structured exercise as readable Markdown: the problem first, then solution/answer."""
    f = {name: structured_field(structured, name) for name in REQUIRED_FIELDS[exercise_type]}
    if exercise_type == "code":
        return (
            f"### Exercise\n\n{f['problem']}\n\n```python\n{f['signature']}\n```\n\n"
            f"### Tests\n\n```python\n{f['tests']}\n```\n\n"
            f"### Solution\n\n```python\n{f['solution']}\n```"
        )
    if exercise_type == "quantitative":
        return (
            f"### Exercise\n\n{f['problem']}\n\n### Worked solution\n\n"
            f"{f['worked_solution']}\n\n**Final answer:** {f['final_answer']}"
        )
    return f"### Question\n\n{f['problem']}\n\n### Answer\n\n{f['answer']}"


# --------------------------------------------------------------------------- front-matter


class Params(BaseModel):
    """Sampling parameters sent with every request of a template (None: not sent)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(1024, ge=16, le=32768)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: list[str] | None = None


class TransformSpec(BaseModel):
    """What a ``kind: transform`` template applies to, how often, and how it evolves it."""

    model_config = ConfigDict(extra="forbid")

    kinds: list[Literal["exercise"]] = Field(default_factory=lambda: ["exercise"], min_length=1)
    exercise_types: list[ExerciseType] = Field(default_factory=list)  # empty: every type
    steps: int = Field(1, ge=1, le=5)
    #: Evol-Instruct operations: id -> instruction; one is picked per request (seeded).
    operations: dict[str, str] = Field(min_length=1)


class FrontMatter(BaseModel):
    """The YAML header of a template. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Kind
    description: str = Field(min_length=1)
    version: int | str = 1
    audiences: list[str] = Field(default_factory=list)  # empty: every audience
    styles: list[str] = Field(default_factory=list)  # empty: every style
    disciplines: list[str] = Field(default_factory=list)  # taxonomy ids; empty: every one
    weight: float = Field(1.0, gt=0)  # how often the plan draws it relative to the others
    params: Params = Field(default_factory=Params)
    output: Literal["text", "json", "inherit"] = "text"
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    exercise_type: ExerciseType | None = None
    system: str | None = None
    openers: str | None = None  # which list of _openers.yaml (default: the kind)
    transform_of: TransformSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FrontMatter:
        if self.kind == "exercise" and self.exercise_type is None:
            raise ValueError(
                "kind 'exercise' needs exercise_type: code | quantitative | conceptual"
            )
        if self.output == "json" and not self.json_schema:
            raise ValueError("output 'json' needs a schema (a JSON schema written as YAML)")
        if self.output != "json" and self.json_schema:
            raise ValueError("schema is only used with output: json")
        if self.kind == "transform" and self.transform_of is None:
            raise ValueError("kind 'transform' needs transform_of: {kinds, steps, operations}")
        if self.kind != "transform" and self.transform_of is not None:
            raise ValueError("transform_of is only allowed with kind: transform")
        if self.output == "inherit" and self.kind != "transform":
            raise ValueError("output 'inherit' is only allowed with kind: transform")
        if self.kind == "system" and (self.audiences or self.styles or self.system):
            raise ValueError("a system template takes no audiences, styles or system")
        return self


class Persona(BaseModel):
    """One audience or style entry of the shared YAML files."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    guidance: str = Field(min_length=1)


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Template:
    """One parsed template file."""

    name: str
    path: Path
    front: FrontMatter
    body: str
    body_line: int  # 1-based file line where the body starts
    sha256: str  # of the file bytes plus the shared files it uses

    @property
    def kind(self) -> str:
        return self.front.kind

    @property
    def exercise_type(self) -> str | None:
        return self.front.exercise_type


@dataclass(frozen=True)
class Rendered:
    """What one template renders to: the exact messages, parameters and schema to send."""

    template: str
    messages: tuple[dict[str, str], ...]
    params: dict[str, Any]
    schema: dict[str, Any] | None
    opener: str | None


@dataclass
class TemplateSet:
    """Every template of a directory plus the shared audiences, styles and openers."""

    root: Path
    templates: dict[str, Template]
    audiences: dict[str, Persona]
    styles: dict[str, Persona]
    openers: dict[str, list[str]]
    env: SandboxedEnvironment = field(repr=False)

    def __getitem__(self, name: str) -> Template:
        try:
            return self.templates[name]
        except KeyError:
            known = ", ".join(sorted(self.templates)) or "none"
            raise TemplateError(
                f"unknown template '{name}'",
                file=self.root,
                hint=f"known templates: {known}",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.templates

    def __iter__(self) -> Iterator[Template]:
        return iter(self.templates.values())

    def __len__(self) -> int:
        return len(self.templates)

    def generators(self) -> list[Template]:
        """Templates that make documents from a unit (not system, not transform)."""
        return [t for t in self if t.kind not in ("system", "transform")]

    def transforms(self) -> list[Template]:
        return [t for t in self if t.kind == "transform"]

    def audiences_for(self, template: Template) -> list[str]:
        return list(template.front.audiences or self.audiences)

    def styles_for(self, template: Template) -> list[str]:
        return list(template.front.styles or self.styles)

    def output_of(self, template: Template, source: Template | None = None) -> tuple[str, Any]:
        """``(output, schema)`` of a template; a transform with ``inherit`` takes its source's."""
        if template.front.output == "inherit":
            if source is None:
                raise TemplateError(
                    f"template '{template.name}' inherits its output: render it with an exercise",
                    file=template.path,
                )
            return self.output_of(source)
        return template.front.output, template.front.json_schema

    def pick_opener(self, template: Template, key: str) -> str | None:
        """A deterministic opener instruction for ``key`` (a request id), or None if none."""
        choices = self.openers.get(template.front.openers or template.kind) or []
        if not choices:
            return None
        return choices[seeded_random(key, "opener").randrange(len(choices))]

    def render(
        self,
        name: str,
        unit: Unit,
        *,
        audience: str,
        style: str,
        sample_index: int = 0,
        opener: str | None = None,
        extra: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Rendered:
        """Render template ``name`` for ``unit``: system message (if any) and user message.

        ``extra`` holds the transform variables (exercise, evolution, step, ...); ``source`` is
        the template name of the exercise a transform evolves (for ``output: inherit``).
        Raises ``TemplateError`` with ``file:line`` on any rendering error.
        """
        template = self[name]
        if audience not in self.audiences:
            raise TemplateError(
                f"unknown audience '{audience}'",
                file=self.root / AUDIENCES_FILE,
                hint=f"known audiences: {', '.join(self.audiences)}",
            )
        if style not in self.styles:
            raise TemplateError(
                f"unknown style '{style}'",
                file=self.root / STYLES_FILE,
                hint=f"known styles: {', '.join(self.styles)}",
            )
        source_template = self[source] if source else None
        context = self.context(
            template,
            unit,
            audience=audience,
            style=style,
            sample_index=sample_index,
            opener=opener,
            extra=extra,
            source=source_template,
        )
        messages: list[dict[str, str]] = []
        system = template.front.system
        if system:
            if system in self.templates:
                messages.append({"role": "system", "content": self._render_body(system, context)})
            else:
                messages.append({"role": "system", "content": _tidy(system)})
        messages.append({"role": "user", "content": self._render_body(name, context)})
        _output, schema = self.output_of(template, source_template)
        return Rendered(
            template=name,
            messages=tuple(messages),
            params=template.front.params.model_dump(exclude_none=True),
            schema=_plain(schema) if schema else None,
            opener=opener,
        )

    def context(
        self,
        template: Template,
        unit: Unit,
        *,
        audience: str,
        style: str,
        sample_index: int = 0,
        opener: str | None = None,
        extra: Mapping[str, Any] | None = None,
        source: Template | None = None,
    ) -> dict[str, Any]:
        """The variables a template body sees (see UNIT_VARIABLES and REQUEST_VARIABLES)."""
        ctx: dict[str, Any] = unit.to_dict()
        ctx.update(
            unit=unit,
            audience={"id": audience, **self.audiences[audience].model_dump()},
            style={"id": style, **self.styles[style].model_dump()},
            opener=opener or "",
            sample_index=sample_index,
            kind=template.kind,
            exercise_type=template.exercise_type or (source.exercise_type if source else None),
            template=template.name,
        )
        if extra:
            ctx.update(extra)
        return ctx

    def _render_body(self, name: str, context: dict[str, Any]) -> str:
        template = self.templates[name]
        try:
            return _tidy(self.env.get_template(name).render(context))
        except SecurityError as exc:
            raise TemplateError(
                f"unsafe access in template: {exc}",
                file=template.path,
                line=_template_line(exc, template.path),
                hint="templates may only read public fields of the unit and the listed variables",
            ) from None
        except UndefinedError as exc:
            if re.search(r"attribute '_", str(exc)):  # blocked by the sandbox, then chained on
                raise TemplateError(
                    f"unsafe access in template: {exc}",
                    file=template.path,
                    line=_template_line(exc, template.path),
                    hint="templates may only read public fields of the unit and the listed "
                    "variables",
                ) from None
            raise TemplateError(
                f"undefined value in template: {exc}",
                file=template.path,
                line=_template_line(exc, template.path),
                hint="check the variable name; `corpus templates check` lists the allowed ones",
            ) from None
        except Exception as exc:  # any other runtime error of the template's own code
            raise TemplateError(
                f"template failed to render: {type(exc).__name__}: {exc}",
                file=template.path,
                line=_template_line(exc, template.path),
            ) from None


# --------------------------------------------------------------------------- helpers


def seeded_random(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from the sha256 of ``parts`` (stable across runs)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return random.Random(int(digest[:16], 16))


def _tidy(text: str) -> str:
    """Strip trailing spaces and collapse runs of blank lines: rendering stays clean."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _plain(obj: Any) -> Any:
    """ruamel's commented containers -> plain dicts and lists (for hashing and JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _template_line(exc: BaseException, path: Path) -> int | None:
    """The template line of a runtime error: jinja rewrites tracebacks to template lines."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == str(path):
            line = frame.lineno
    return line


def _yaml_line(data: Any, loc: Iterable[Any]) -> int | None:
    """0-based line of the deepest key of ``loc`` found in a ruamel mapping, else None."""
    line = None
    node = data
    for key in loc:
        try:
            if isinstance(node, Mapping) and key in node:
                line = node.lc.key(key)[0]
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                line = node.lc.item(key)[0]
                node = node[key]
            else:
                break
        except (AttributeError, KeyError, TypeError):
            break
    return line


def _load_yaml(text: str, path: Path, first_line: int, problems: list[Problem]) -> Any:
    """Parse YAML with ruamel (keeps line numbers); ``first_line`` is the file line of text."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = first_line + mark.line if mark is not None else first_line
        problems.append(Problem(f"invalid YAML: {exc.problem or exc}", path, line))
    except YAMLError as exc:
        problems.append(Problem(f"invalid YAML: {exc}", path, first_line))
    return None


def _pydantic_problems(
    exc: ValidationError,
    data: Any,
    path: Path,
    first_line: int,
    *,
    prefix: str = "",
    default_line: int | None = None,
) -> list[Problem]:
    """One Problem per pydantic error, at the line of the offending YAML key."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        found = _yaml_line(data, loc)
        line = first_line + found if found is not None else (default_line or first_line)
        if err["type"] == "extra_forbidden":
            message = f"unknown key '{prefix}{dotted}'"
            hint = "check the spelling; templates/README.md lists the front-matter keys"
        elif err["type"] == "missing":
            message = f"missing key '{prefix}{dotted}'"
            hint = None
        elif err["type"] == "value_error":
            message = str(err["msg"]).removeprefix("Value error, ")
            hint = None
        else:
            message = f"bad value for '{prefix}{dotted}': {err['msg']}"
            hint = None
        problems.append(Problem(message, path, line, hint))
    return problems


def split_front_matter(text: str, path: Path) -> tuple[str, str, int]:
    """Split a template file into (front-matter YAML, body, 1-based body start line)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise TemplateError(
            "template must start with YAML front-matter between '---' lines",
            file=path,
            line=1,
            hint="add '---', the keys kind/description/..., then '---' before the Jinja body",
        )
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "".join(lines[1:i]), "".join(lines[i + 1 :]), i + 2
    raise TemplateError(
        "front-matter is not closed: add a line '---' after the YAML keys", file=path, line=1
    )


def make_environment(sources: Mapping[str, tuple[str, Path]]) -> SandboxedEnvironment:
    """The sandboxed, strict Jinja environment; ``sources`` maps name -> (source, path)."""

    def load(name: str) -> tuple[str, str, Any] | None:
        if name not in sources:
            return None
        source, path = sources[name]
        return source, str(path), lambda: True

    return SandboxedEnvironment(
        loader=FunctionLoader(load),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _padded(body: str, body_line: int) -> str:
    """The body preceded by blank lines so that jinja's line numbers are file line numbers."""
    return "\n" * (body_line - 1) + body


# --------------------------------------------------------------------------- shared files


def _load_personas(path: Path, problems: list[Problem]) -> dict[str, Persona]:
    if not path.exists():
        problems.append(
            Problem(
                "missing shared file",
                path,
                hint="it maps an id to {name, description, guidance}; see templates/README.md",
            )
        )
        return {}
    before = len(problems)
    data = _load_yaml(path.read_text(encoding="utf-8"), path, 1, problems)
    if data is None and len(problems) > before:
        return {}  # a YAML error, already reported with its line
    if not isinstance(data, Mapping) or not data:
        problems.append(
            Problem(
                "empty shared file: expected a mapping of id -> {name, description, guidance}"
                if data is None
                else "expected a mapping of id -> {name, description, guidance}",
                path,
                1,
                hint="add at least one entry; see templates/README.md",
            )
        )
        return {}
    out: dict[str, Persona] = {}
    for key, value in data.items():
        line = data.lc.key(key)[0] + 1
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            problems.append(
                Problem(f"bad id '{key}': use lower_snake_case", path, line, "e.g. high_school")
            )
            continue
        try:
            out[key] = Persona.model_validate(_plain(value))
        except ValidationError as exc:
            problems.extend(
                _pydantic_problems(exc, value, path, 1, prefix=f"{key}.", default_line=line)
            )
    return out


def _load_openers(path: Path, problems: list[Problem]) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    data = _load_yaml(path.read_text(encoding="utf-8"), path, 1, problems)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        problems.append(Problem("expected a mapping of kind -> list of opener instructions", path))
        return {}
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        line = data.lc.key(key)[0] + 1
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(Problem(f"'{key}' must be a list of non-empty strings", path, line))
            continue
        out[str(key)] = [str(v).strip() for v in value]
    return out


# --------------------------------------------------------------------------- samples


def sample_units() -> list[Unit]:
    """Units used to test-render every template: with and without optional fields."""
    return [
        Unit(
            unit_id="sample-calculus-limits",
            discipline="mathematics",
            subject="calculus",
            topic="limits",
            taxonomy_path="mathematics/calculus/limits",
            discipline_name="Mathematics",
            subject_name="Calculus",
            topic_name="Limits and continuity",
            concepts=("epsilon-delta definition", "one-sided limits", "continuity"),
            session="Limits and continuity",
            session_index=1,
            difficulty="intermediate",
            level="topic",
            description="What it means for a function to approach a value.",
            seed=1,
        ),
        Unit(
            unit_id="sample-algorithms-search",
            discipline="computer-science",
            subject="algorithms",
            topic="binary-search",
            taxonomy_path="computer-science/algorithms/binary-search",
            discipline_name="Computer science",
            subject_name="Algorithms",
            topic_name="Binary search",
            concepts=("sorted arrays", "loop invariants"),
            difficulty="basic",
        ),
        Unit(
            unit_id="sample-biology-photosynthesis",
            discipline="biology",
            subject="plant-biology",
            topic="photosynthesis",
            taxonomy_path="biology/plant-biology/photosynthesis",
            discipline_name="Biology",
            subject_name="Plant biology",
            topic_name="Photosynthesis",
            concepts=(),
            session=None,
            difficulty="advanced",
            level=None,
            description=None,
        ),
    ]


SAMPLE_EXERCISES: dict[str, dict[str, str]] = {
    "code": {
        "problem": "Write a function that returns the index of a target in a sorted list, or -1.",
        "signature": 'def find(xs: list[int], target: int) -> int:\n    """Index or -1."""',
        "tests": "assert find([1, 3, 5], 3) == 1\nassert find([], 2) == -1",
        "solution": (
            "def find(xs: list[int], target: int) -> int:\n"
            "    lo, hi = 0, len(xs) - 1\n"
            "    while lo <= hi:\n"
            "        mid = (lo + hi) // 2\n"
            "        if xs[mid] == target:\n"
            "            return mid\n"
            "        if xs[mid] < target:\n"
            "            lo = mid + 1\n"
            "        else:\n"
            "            hi = mid - 1\n"
            "    return -1"
        ),
    },
    "quantitative": {
        "problem": "Compute the limit of (x**2 - 1)/(x - 1) as x approaches 1.",
        "worked_solution": "Factor: (x - 1)(x + 1)/(x - 1) = x + 1 for x != 1, so the limit is 2.",
        "final_answer": "2",
    },
    "conceptual": {
        "problem": "Why does a plant in the dark stop producing oxygen?",
        "answer": "The light reactions that split water and release oxygen need light energy.",
    },
}


def sample_transform_extra(exercise_type: str, unit: Unit) -> dict[str, Any]:
    """Transform variables for a test render: a sample exercise of ``exercise_type``."""
    structured = dict(SAMPLE_EXERCISES[exercise_type])
    return {
        "exercise": {**structured, "text": render_structured(exercise_type, structured)},
        "evolution": {"id": "add_constraints", "instruction": "Add one more constraint."},
        "step": 1,
        "source_difficulty": unit.difficulty,
        "target_difficulty": harder(unit.difficulty),
    }


# --------------------------------------------------------------------------- checks


def _static_problems(
    ast: nodes.Template, template: Template, allowed: frozenset[str]
) -> list[Problem]:
    """Undeclared variables and unsafe attribute names, each with its file line."""
    problems: list[Problem] = []
    undeclared = meta.find_undeclared_variables(ast) - allowed
    first_use: dict[str, int] = {}
    for node in ast.find_all(nodes.Name):
        if node.ctx == "load" and node.name in undeclared:
            first_use.setdefault(node.name, node.lineno)
    for name in sorted(undeclared, key=lambda n: (first_use.get(n, 0), n)):
        problems.append(
            Problem(
                f"undefined variable '{name}'",
                template.path,
                first_use.get(name),
                hint="allowed: " + ", ".join(sorted(allowed)),
            )
        )
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            attr = node.arg.value if isinstance(node.arg.value, str) else None
        if attr and attr.startswith("_"):
            problems.append(
                Problem(
                    f"unsafe attribute access '{attr}'",
                    template.path,
                    node.lineno,
                    hint="templates may only read public fields",
                )
            )
    return problems


def _parse_template(path: Path, problems: list[Problem]) -> tuple[Template, Any] | None:
    """Read one template file: front-matter (validated) and body. None if unusable."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(Problem("template is not UTF-8 text", path))
        return None
    try:
        front_text, body, body_line = split_front_matter(text, path)
    except TemplateError as exc:
        problems.extend(exc.problems)
        return None
    data = _load_yaml(front_text, path, 2, problems)
    if data is None:
        if not front_text.strip():
            problems.append(Problem("empty front-matter: kind and description are needed", path, 1))
        return None
    if not isinstance(data, Mapping):
        problems.append(Problem("front-matter must be a YAML mapping", path, 2))
        return None
    try:
        front = FrontMatter.model_validate(_plain(data))
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, data, path, 2))
        return None
    template = Template(
        name=path.stem, path=path, front=front, body=body, body_line=body_line, sha256=""
    )
    return template, data


def _key_line(data: Any, key: str) -> int:
    return 2 + (_yaml_line(data, (key,)) or 0)


def check_templates(directory: str | Path) -> tuple[TemplateSet | None, list[Problem]]:
    """Check every template of ``directory``; return the set (if usable) and all problems.

    Checks: shared audience/style/opener files; front-matter schema (unknown keys, types,
    consistency); references (audiences, styles, system template, exercise JSON schemas
    carrying REQUIRED_FIELDS); Jinja syntax; undeclared variables and unsafe attribute names
    (statically, every branch); then a sandboxed render of every template with every
    audience, style and sample unit, so that runtime errors are reported with file:line too.
    """
    root = Path(directory)
    problems: list[Problem] = []
    if not root.is_dir():
        return None, [
            Problem(
                "templates directory not found",
                root,
                hint="pass --templates DIR or set [generate] templates_dir",
            )
        ]
    audiences = _load_personas(root / AUDIENCES_FILE, problems)
    styles = _load_personas(root / STYLES_FILE, problems)
    openers = _load_openers(root / OPENERS_FILE, problems)
    paths = sorted(root.glob("*.j2"))
    if not paths:
        problems.append(Problem("no templates (*.j2) found", root, hint="see templates/README.md"))

    parsed: dict[str, tuple[Template, Any]] = {}
    for path in paths:
        result = _parse_template(path, problems)
        if result is not None:
            parsed[path.stem] = result

    shared_bytes = b"".join((root / f).read_bytes() for f in SHARED_FILES if (root / f).exists())
    templates: dict[str, Template] = {}
    asts: dict[str, nodes.Template] = {}
    sources: dict[str, tuple[str, Path]] = {}
    for name, (template, data) in parsed.items():
        front = template.front
        path = template.path
        n_before = len(problems)
        for aud in front.audiences:
            if audiences and aud not in audiences:
                problems.append(
                    Problem(
                        f"unknown audience '{aud}'",
                        path,
                        _key_line(data, "audiences"),
                        hint=f"add it to {AUDIENCES_FILE} or use one of: {', '.join(audiences)}",
                    )
                )
        for sty in front.styles:
            if styles and sty not in styles:
                problems.append(
                    Problem(
                        f"unknown style '{sty}'",
                        path,
                        _key_line(data, "styles"),
                        hint=f"add it to {STYLES_FILE} or use one of: {', '.join(styles)}",
                    )
                )
        if front.system and re.fullmatch(r"[\w-]+", front.system):
            target = parsed.get(front.system)
            if target is None or target[0].kind != "system":
                problems.append(
                    Problem(
                        f"system template '{front.system}' not found",
                        path,
                        _key_line(data, "system"),
                        hint="name a kind: system template, or write the system message inline",
                    )
                )
        if front.openers and front.openers not in openers:
            problems.append(
                Problem(
                    f"unknown opener list '{front.openers}'",
                    path,
                    _key_line(data, "openers"),
                    hint=f"lists in {OPENERS_FILE}: {', '.join(openers) or 'none'}",
                )
            )
        if front.output == "json" and front.exercise_type:
            problems.extend(_schema_problems(front, path, _key_line(data, "schema")))
        ast = None
        try:
            ast = make_environment({}).parse(
                _padded(template.body, template.body_line), name=name, filename=str(path)
            )
        except TemplateSyntaxError as exc:
            problems.append(Problem(f"template syntax error: {exc.message}", path, exc.lineno))
        if ast is not None:
            allowed = UNIT_VARIABLES | REQUEST_VARIABLES | JINJA_GLOBALS
            if front.kind == "transform":
                allowed |= TRANSFORM_VARIABLES
            problems.extend(_static_problems(ast, template, allowed))
        if len(problems) > n_before:
            continue
        own = path.read_bytes()
        system_bytes = b""
        if front.system and front.system in parsed:
            system_bytes = parsed[front.system][0].path.read_bytes()
        digest = hashlib.sha256(own + b"\0" + system_bytes + b"\0" + shared_bytes).hexdigest()
        templates[name] = Template(
            name=name,
            path=path,
            front=front,
            body=template.body,
            body_line=template.body_line,
            sha256=digest,
        )
        asts[name] = ast
        sources[name] = (_padded(template.body, template.body_line), path)

    if not audiences or not styles:
        return None, problems
    tset = TemplateSet(
        root=root,
        templates=templates,
        audiences=audiences,
        styles=styles,
        openers=openers,
        env=make_environment(sources),
    )
    problems.extend(_render_problems(tset))
    return tset, problems


def _schema_problems(front: FrontMatter, path: Path, line: int) -> list[Problem]:
    schema = front.json_schema or {}
    required = REQUIRED_FIELDS[front.exercise_type or ""]
    problems = []
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        return [Problem("schema must be an object schema with properties", path, line)]
    missing = [f for f in required if f not in schema["properties"]]
    unrequired = [f for f in required if f not in (schema.get("required") or [])]
    if missing:
        problems.append(
            Problem(
                f"schema lacks the {front.exercise_type} exercise fields: {', '.join(missing)}",
                path,
                line,
                hint="verification reads exactly these fields: " + ", ".join(required),
            )
        )
    elif unrequired:
        problems.append(
            Problem(
                f"schema must list as required: {', '.join(unrequired)}",
                path,
                line,
                hint="add them to the schema's required list",
            )
        )
    return problems


def _render_problems(tset: TemplateSet) -> list[Problem]:
    """Render every template with every audience, style and sample unit (sandboxed)."""
    problems: list[Problem] = []
    seen: set[str] = set()
    exercise_sources = {
        t.exercise_type: t.name for t in tset if t.kind == "exercise" and t.exercise_type
    }
    for template in tset:
        if template.kind == "system":
            continue  # rendered through the templates that use it
        # (exercise type, source template) per variant; transforms get a sample exercise
        variants: list[tuple[str | None, str | None]] = [(None, None)]
        if template.kind == "transform":
            spec = template.front.transform_of
            types = (spec.exercise_types if spec else None) or list(REQUIRED_FIELDS)
            variants = [(t, exercise_sources.get(t)) for t in types]
        for unit in sample_units():
            for audience in tset.audiences_for(template):
                for style in tset.styles_for(template):
                    for ex_type, source in variants:
                        extra = None
                        if ex_type is not None:
                            if source is None and template.front.output == "inherit":
                                continue  # no exercise template of that type to inherit from
                            extra = {**sample_transform_extra(ex_type, unit)}
                            extra["exercise_type"] = ex_type
                        try:
                            tset.render(
                                template.name,
                                unit,
                                audience=audience,
                                style=style,
                                opener=tset.pick_opener(template, unit.unit_id),
                                extra=extra,
                                source=source,
                            )
                        except TemplateError as exc:
                            if str(exc) not in seen:
                                seen.add(str(exc))
                                problems.append(exc.problem)
    return problems


def load_templates(directory: str | Path) -> TemplateSet:
    """Load and check the templates of ``directory``; raise every problem found at once."""
    tset, problems = check_templates(directory)
    if problems:
        if len(problems) == 1:
            p = problems[0]
            raise TemplateError(p.message, file=p.file, line=p.line, hint=p.hint)
        raise BuilderValidationError(problems, summary=f"{len(problems)} template problem(s)")
    if tset is None:  # check_templates reports why; this is a bug if it did not
        raise TemplateError("templates could not be loaded", file=directory)
    return tset
