"""GLAN-style syllabi: one per subject, made of class sessions with key concepts.

GLAN ("Synthetic Data (Almost) from Scratch", Li et al. 2024) gets broad, deliberate coverage
by asking a model for a syllabus per subject (ordered class sessions, each with key concepts)
and then generating from sampled sessions and concepts instead of whatever the model drifts
to. This package owns the syllabus files; ``builder.walk`` samples from them.

Files live next to the taxonomy, one per subject, and are curator-editable YAML::

    taxonomy/<discipline_id>/syllabi/<subject_id>.yaml

    subject: calculus
    discipline: mathematics
    status: proposed            # proposed | approved (corpus syllabus approve calculus)
    generated_by: {model: ..., request_sha256: ..., prompt_version: syllabus-v1, ...}
    content_sha256: ...         # hash of the sessions as generated: detects curator edits
    sessions:                   # basic -> advanced
      - title: Limits
        goals: [Compute limits of elementary functions]
        concepts: [epsilon-delta definition, one-sided limits, squeeze theorem]

Regeneration never overwrites a syllabus that is approved, or whose sessions no longer hash to
``content_sha256`` (a curator edited it), unless ``force=True``.

**Which nodes are subjects.** In a discipline where some node has ``level: subject`` (the
starter taxonomy), the subjects are exactly those nodes, and a node's subject is its nearest
ancestor-or-self with that level. In a discipline without that level name (imported
taxonomies), the subjects are the parents of leaves (and a discipline that is itself a leaf);
a node's subject is then the node itself when it has a leaf child, else its parent for a leaf.
``subject_of`` returns ``None`` for nodes above the subject level.

Modules: ``model`` (records, subjects, paths), ``check`` (reading, validation, loading),
``write`` (files, approval, rendering), ``generate`` (prompt, reply parsing, generation).
"""

from __future__ import annotations

from builder.syllabus.check import load_syllabi, load_syllabus, validate_syllabi
from builder.syllabus.generate import (
    SyllabusOutcome,
    SyllabusReport,
    generate_syllabi,
    parse_reply,
    reply_schema,
    syllabus_request,
)
from builder.syllabus.model import (
    PROMPT_VERSION,
    SUBJECT_LEVEL,
    SYLLABI_DIR,
    SYLLABUS_STATUSES,
    Session,
    Syllabus,
    is_subject,
    sessions_sha256,
    subject_of,
    subjects,
    syllabus_files,
    syllabus_path,
)
from builder.syllabus.write import approve_syllabus, render_syllabus

__all__ = [
    "PROMPT_VERSION",
    "SUBJECT_LEVEL",
    "SYLLABI_DIR",
    "SYLLABUS_STATUSES",
    "Session",
    "Syllabus",
    "SyllabusOutcome",
    "SyllabusReport",
    "approve_syllabus",
    "generate_syllabi",
    "is_subject",
    "load_syllabi",
    "load_syllabus",
    "parse_reply",
    "render_syllabus",
    "reply_schema",
    "sessions_sha256",
    "subject_of",
    "subjects",
    "syllabus_files",
    "syllabus_path",
    "syllabus_request",
    "validate_syllabi",
]
