"""The small taxonomies the walker, syllabus and growth tests share (one place for them).

``MATH`` and ``PHYSICS`` form one two-discipline taxonomy with what those tests need:
comments (kept by edits), a described leaf, a weighted subject with a prerequisite, a proposed
topic and a proposed subject with an approved child, and a cross-file prerequisite. Approved
leaves: linear-equations, polynomials, limits, derivatives, kinematics, dynamics, oscillations
(one walk round is 7 units).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

__all__ = ["MATH", "PHYSICS", "run_cli", "write_syllabus", "write_taxonomy"]

MATH = """\
# Mathematics (shared test taxonomy): curated by hand.
id: mathematics
name: Mathematics
level: discipline
children:
  - id: algebra
    name: Algebra
    level: subject  # the first subject
    children:
      - id: linear-equations
        name: Linear equations
        level: topic
        description: Solving linear equations, systems and matrices.
      - {id: polynomials, name: Polynomials, level: topic}
  - id: calculus
    name: Calculus
    level: subject
    description: Limits, derivatives and integrals of functions of one variable.
    weight: 2
    prerequisites: [algebra]
    children:
      - {id: limits, name: Limits and continuity, level: topic}
      - {id: derivatives, name: Derivatives, level: topic}
      - {id: integrals, name: Integrals, level: topic, status: proposed}
  - id: topology
    name: Topology
    level: subject
    status: proposed
    children:
      - {id: open-sets, name: Open sets, level: topic}
"""

PHYSICS = """\
id: physics
name: Physics
level: discipline
children:
  - id: mechanics
    name: Mechanics
    level: subject
    prerequisites: [calculus]
    children:
      - {id: kinematics, name: Kinematics, level: topic}
      - {id: dynamics, name: Dynamics, level: topic, prerequisites: [kinematics]}
  - id: waves
    name: Waves
    level: subject
    children:
      - {id: oscillations, name: Oscillations, level: topic}
"""


def write_taxonomy(root: Path, files: dict[str, str] | None = None) -> Path:
    """Write ``files`` (name -> YAML text; default MATH and PHYSICS) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {"mathematics": MATH, "physics": PHYSICS}).items():
        (root / f"{name}.yaml").write_text(text, encoding="utf-8")
    return root


def write_syllabus(tax_dir: Path, status: str, n: int = 6, subject: str = "calculus") -> Path:
    """A valid syllabus file of ``n`` sessions (concepts c<i>-0..3) for a mathematics subject."""
    path = tax_dir / "mathematics" / "syllabi" / f"{subject}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"subject: {subject}", "discipline: mathematics", f"status: {status}", "sessions:"]
    for i in range(n):
        concepts = ", ".join(f"c{i}-{k}" for k in range(4))
        lines += [
            f"  - title: Session {i}",
            f"    goals: [goal {i}]",
            f"    concepts: [{concepts}]",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``corpus ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from builder.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
