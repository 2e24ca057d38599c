"""Template records: front-matter models, ``Template`` and the sandboxed ``TemplateSet``."""

from __future__ import annotations

import hashlib
import random
import re
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jinja2 import Template as JinjaTemplate
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, model_validator

from builder.errors import TemplateError
from builder.records import Unit
from builder.templates.spec import (
    AUDIENCES_FILE,
    STYLES_FILE,
    ExerciseType,
    Kind,
)

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
    #: what repeats across renders, made once: persona and params dicts, plain schemas, the
    #: variables a system template reads (see ``_system``)
    _made: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: system template renders by the values of the variables they read
    _system_renders: dict[tuple[Any, ...], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

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
        # The variables the body sees (see UNIT_VARIABLES and REQUEST_VARIABLES).
        context: dict[str, Any] = unit.to_dict()
        context.update(
            unit=unit,
            audience=self._persona("audience", audience),
            style=self._persona("style", style),
            opener=opener or "",
            sample_index=sample_index,
            kind=template.kind,
            exercise_type=template.exercise_type
            or (source_template.exercise_type if source_template else None),
            template=template.name,
        )
        context.update(extra or {})
        messages: list[dict[str, str]] = []
        system = template.front.system
        if system:
            if system in self.templates:
                messages.append({"role": "system", "content": self._system(system, context)})
            else:
                messages.append({"role": "system", "content": _tidy(system)})
        messages.append({"role": "user", "content": self._render_body(name, context)})
        _output, schema = self.output_of(template, source_template)
        return Rendered(
            template=name,
            messages=tuple(messages),
            params=dict(self._params(template)),
            schema=self._plain_schema(name, source, schema) if schema else None,
            opener=opener,
        )

    def _params(self, template: Template) -> dict[str, Any]:
        """A template's front-matter params as sent (dumped once per template)."""
        key = ("params", template.name)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = template.front.params.model_dump(exclude_none=True)
        return made

    def _plain_schema(self, name: str, source: str | None, schema: Any) -> Any:
        """The plain-dict schema of a render (converted once per template and source)."""
        key = ("schema", name, source)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = _plain(schema)
        return made

    def _persona(self, which: str, name: str) -> dict[str, Any]:
        """The ``audience`` / ``style`` variable: a fresh dict per render (a template may
        change it), copied from one made per persona instead of dumping the model again."""
        key = (which, name)
        made = self._made.get(key)
        if made is None:
            persona = (self.audiences if which == "audience" else self.styles)[name]
            made = self._made[key] = {"id": name, **persona.model_dump()}
        return dict(made)

    def _system(self, name: str, context: dict[str, Any]) -> str:
        """System template ``name`` rendered for ``context``, reused when the variables it
        reads have the values of an earlier render: it usually reads two or three (the
        discipline, the audience), so a corpus renders it a few hundred times, not once per
        request. A template whose output may depend on more than the variables it names
        (an include or import, the ``random`` filter) is rendered every time."""
        names = self._made.get(("reads", name), ())
        if names == ():
            names = self._made[("reads", name)] = _reads(self.env, name)
        if names is None:
            return self._render_body(name, context)
        try:
            key = (name, *(_frozen(context.get(n, _ABSENT)) for n in names))
            text = self._system_renders.get(key)
        except TypeError:  # a value that cannot be a key: render it
            return self._render_body(name, context)
        if text is None:
            text = self._render_body(name, context)
            if len(self._system_renders) >= _SYSTEM_RENDERS:
                self._system_renders.clear()
            self._system_renders[key] = text
        return text

    def _compiled(self, name: str) -> JinjaTemplate:
        """Template ``name`` compiled, once per set (the environment's sources are this
        set's: never out of date, so its cache check per render is saved too)."""
        key = ("compiled", name)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self.env.get_template(name)
        return made

    def _render_body(self, name: str, context: dict[str, Any]) -> str:
        template = self.templates[name]
        try:
            return _tidy(_render(self._compiled(name), context))
        except (SecurityError, UndefinedError) as exc:
            # A blocked private attribute surfaces as an UndefinedError chained on the sandbox's
            if isinstance(exc, SecurityError) or re.search(r"attribute '_", str(exc)):
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

#: system renders kept by ``TemplateSet._system`` (past that the memo starts again)
_SYSTEM_RENDERS = 4096
_ABSENT = object()
#: nodes that make a template's output depend on more than the variables it names
_NOT_PURE = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


def _reads(env: SandboxedEnvironment, name: str) -> tuple[str, ...] | None:
    """The variables template ``name`` reads, or None when its output may depend on more
    (it includes or imports another template, or draws with the ``random`` filter)."""
    if env.loader is None:
        return None
    ast = env.parse(env.loader.get_source(env, name)[0])
    if any(True for _ in ast.find_all(_NOT_PURE)):
        return None
    if any(f.name == "random" for f in ast.find_all(nodes.Filter)):
        return None
    return tuple(sorted(meta.find_undeclared_variables(ast)))


def _frozen(value: Any) -> Any:
    """``value`` as a dict key that tells apart what renders differently (1, 1.0, True and
    "1" are four keys; dict order is kept, a template may loop over it). Raises TypeError
    for a type it does not know."""
    if type(value) is str or value is None or value is _ABSENT:
        return value
    if type(value) in (int, float, bool):
        return (type(value), value)
    if type(value) is dict:
        return (dict, tuple((k, _frozen(v)) for k, v in value.items()))
    if type(value) in (list, tuple):
        return (type(value), tuple(_frozen(v) for v in value))
    if type(value) is Unit:
        return value
    raise TypeError(f"not a memo key: {type(value).__name__}")


def seeded_random(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from the sha256 of ``parts`` (stable across runs)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return random.Random(int(digest[:16], 16))


#: what makes ASCII text need the line-by-line pass of ``_tidy``: a line break other than
#: "\n" (``str.splitlines`` splits on them) or whitespace ending a line
_UNTIDY_ASCII = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", " \n", "\t\n", "\x1f\n")


def _render(template: JinjaTemplate, context: dict[str, Any]) -> str:
    """``template.render(context)``, with the context copied once: its globals and the
    variables in one dict, given to the template as they are (``new_context(shared=True)``),
    where ``render`` copies the variables and then both into a third dict (~2 of a section's
    ~26 us). Errors are reported as ``render`` reports them (template lines in the
    traceback)."""
    env = template.environment
    ctx = template.new_context({**template.globals, **context}, shared=True)
    try:
        return env.concat(template.root_render_func(ctx))  # type: ignore[attr-defined]
    except Exception:
        env.handle_exception()
        raise  # not reached: handle_exception raises


def _tidy(text: str) -> str:
    r"""Strip trailing spaces and collapse runs of blank lines: rendering stays clean.

    Equal to ``re.sub(r"\n{3,}", "\n\n", "\n".join(l.rstrip() for l in
    text.strip().splitlines()))`` at a third of the cost (it runs twice per request): the
    line pass is skipped for ASCII text it would not change, and the runs of newlines are
    collapsed by ``str.replace`` (each pass shortens every run of 3 or more)."""
    text = text.strip()
    if not text.isascii() or any(s in text for s in _UNTIDY_ASCII):
        text = "\n".join(line.rstrip() for line in text.splitlines())
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text


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
