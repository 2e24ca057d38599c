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

from builder.templates.check import (
    check_templates,
    load_templates,
    make_environment,
    split_front_matter,
)
from builder.templates.model import (
    FrontMatter,
    Params,
    Persona,
    Rendered,
    Template,
    TemplateSet,
    TransformSpec,
    seeded_random,
)
from builder.templates.samples import (
    SAMPLE_EXERCISES,
    sample_transform_extra,
    sample_units,
)
from builder.templates.spec import (
    AUDIENCES_FILE,
    DIFFICULTY_ALIASES,
    DIFFICULTY_LADDER,
    JINJA_GLOBALS,
    OPENERS_FILE,
    REQUEST_VARIABLES,
    REQUIRED_FIELDS,
    SHARED_FILES,
    STYLES_FILE,
    TRANSFORM_VARIABLES,
    UNIT_VARIABLES,
    ExerciseType,
    Kind,
    harder,
    render_structured,
    structured_field,
    structured_problem,
)

__all__ = [
    "AUDIENCES_FILE",
    "DIFFICULTY_ALIASES",
    "DIFFICULTY_LADDER",
    "ExerciseType",
    "FrontMatter",
    "JINJA_GLOBALS",
    "Kind",
    "OPENERS_FILE",
    "Params",
    "Persona",
    "REQUEST_VARIABLES",
    "REQUIRED_FIELDS",
    "Rendered",
    "SAMPLE_EXERCISES",
    "SHARED_FILES",
    "STYLES_FILE",
    "TRANSFORM_VARIABLES",
    "Template",
    "TemplateSet",
    "TransformSpec",
    "UNIT_VARIABLES",
    "check_templates",
    "harder",
    "load_templates",
    "make_environment",
    "render_structured",
    "sample_transform_extra",
    "sample_units",
    "seeded_random",
    "split_front_matter",
    "structured_field",
    "structured_problem",
]
