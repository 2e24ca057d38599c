"""Loading and checking a template directory: every problem at once, with ``file:line``."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jinja2 import FunctionLoader, StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from builder.errors import Problem, TemplateError
from builder.errors import ValidationError as BuilderValidationError
from builder.templates.model import (
    FrontMatter,
    Persona,
    Template,
    TemplateSet,
    _plain,
)
from builder.templates.samples import sample_transform_extra, sample_units
from builder.templates.spec import (
    AUDIENCES_FILE,
    JINJA_GLOBALS,
    OPENERS_FILE,
    REQUEST_VARIABLES,
    REQUIRED_FIELDS,
    SHARED_FILES,
    STYLES_FILE,
    TRANSFORM_VARIABLES,
    UNIT_VARIABLES,
)


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
