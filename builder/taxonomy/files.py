"""Files of a taxonomy directory: which files it holds, reading them, writing them atomically.

``atomic_write_text`` is kept importable here; its one implementation lives in
``builder.util.files``.
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.errors import Problem, TaxonomyError
from builder.util.files import atomic_write_text

__all__ = ["atomic_write_text", "discover_files", "read_texts"]


def discover_files(root: str | os.PathLike[str]) -> list[Path]:
    """The discipline files of a taxonomy directory (top level only), sorted by name.

    A path to a single YAML file is accepted too.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise TaxonomyError(
            f"taxonomy directory {root} does not exist",
            hint="pass --taxonomy DIR, set [taxonomy] dir in corpus.toml, "
            "or create it with `corpus taxonomy import`",
        )
    files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return files


def read_texts(files: list[Path]) -> tuple[dict[Path, str], list[Problem]]:
    """The text of each file; a file that is not UTF-8 or cannot be read is a problem."""
    texts: dict[Path, str] = {}
    problems: list[Problem] = []
    for f in files:
        try:
            texts[f] = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(f"file is not UTF-8 text ({exc.reason})", f, 1))
        except OSError as exc:
            problems.append(Problem(f"cannot read file: {exc.strerror}", f))
    return texts, problems
