"""Edit taxonomy files in place: add, move, rename, remove nodes and change their status.

Edits go through ruamel.yaml's round-trip mode, so comments, key order, quoting and flow or
block style survive; each file's indentation is detected and reused. Nothing is written until
``save()``, which first validates the whole edited taxonomy: an edit that would make it
invalid is refused with every problem listed and no file touched. Each file is written
atomically (temp file + ``os.replace``).

Only the files an edit touches are parsed in round-trip mode (it is slow); the rest are read
with the fast loader to know which file holds which id.

    editor = TaxonomyEditor("taxonomy")
    editor.add_node("calculus", "series", "Infinite series", status="proposed")
    editor.save()
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from builder.errors import Problem, TaxonomyError, ValidationError
from builder.taxonomy import comments as cm
from builder.taxonomy.crosscheck import DEFAULT_LEVELS
from builder.taxonomy.files import atomic_write_text
from builder.taxonomy.model import STATUSES, Taxonomy, UnknownNodeError
from builder.taxonomy.parse import YamlSyntaxError, parse_yaml
from builder.taxonomy.rtdoc import Doc, names, new_yaml, walk_maps
from builder.taxonomy.tree import after_node, attach, children_of, insert_key
from builder.taxonomy.validate import SLUG_RE, SLUG_RULE, check_texts, discover_files, slugify

__all__ = ["DEFAULT_LEVELS", "NEW_DISCIPLINE", "TaxonomyEditor"]

# The parent to give ``add``/``move`` for a new top-level discipline (its own file).
NEW_DISCIPLINE = "-"


class TaxonomyEditor:
    """Stage edits to the taxonomy at ``root`` and write them with ``save()``.

    Methods raise ``TaxonomyError`` for edits that make no sense (unknown id, duplicate id,
    moving a node under itself, removing a node others depend on); ``save`` raises
    ``ValidationError`` if the edited taxonomy would be invalid. ``changes`` lists what was
    done, one line per edit, for the user.
    """

    def __init__(
        self, root: str | os.PathLike[str] = "taxonomy", *, levels: Iterable[str] = DEFAULT_LEVELS
    ) -> None:
        self.root = Path(root)
        self.levels = tuple(levels)
        if not self.root.exists():
            raise TaxonomyError(
                f"taxonomy directory {self.root} does not exist",
                hint=f"create it (mkdir {self.root}) or pass --taxonomy DIR",
            )
        if not self.root.is_dir():
            raise TaxonomyError(f"{self.root} is not a directory", hint="pass --taxonomy DIR")
        self._texts: dict[Path, str] = {}
        self._raw: dict[Path, Any] = {}  # fast-parsed content of files not loaded round-trip
        self._docs: dict[Path, Doc] = {}
        self._dirty: set[Path] = set()
        self._deleted: set[Path] = set()
        self._where: dict[str, Path] = {}
        self.changes: list[str] = []
        problems: list[Problem] = []
        for path in discover_files(self.root):
            try:
                with path.open(encoding="utf-8", newline="") as fh:  # keep \r\n to write back
                    text = fh.read()
            except UnicodeDecodeError as exc:
                problems.append(Problem(f"file is not UTF-8 text ({exc.reason})", path, 1))
                continue
            self._texts[path] = text
            try:
                data, duplicates = parse_yaml(text)
            except YamlSyntaxError as exc:
                problems.append(Problem(exc.message, path, exc.line))
                continue
            # The round-trip loader refuses duplicate keys, so they must go before editing.
            problems.extend(
                Problem(message, path, line, "keep one of them") for line, message in duplicates
            )
            self._raw[path] = data
            for m, _ in walk_maps(data):
                node_id = m.get("id")
                if isinstance(node_id, str):
                    self._where.setdefault(node_id, path)
        if problems:
            raise ValidationError(
                [Problem("cannot edit: fix these problems first", self.root, None)] + problems
            )

    # -- lookups ------------------------------------------------------------------------------

    def _doc(self, path: Path) -> Doc:
        doc = self._docs.get(path)
        if doc is None:
            text = self._texts[path]
            try:
                y, data = new_yaml(text.lstrip("\ufeff").replace("\r\n", "\n"))
            except YAMLError as exc:  # what the fast reader accepts, round-trip should too
                mark = getattr(exc, "problem_mark", None)
                raise TaxonomyError(
                    f"cannot edit this file: {getattr(exc, 'problem', None) or exc}",
                    file=path,
                    line=mark.line + 1 if mark is not None else None,
                ) from None
            doc = Doc(path, y, data, crlf="\r\n" in text, bom=text.startswith("\ufeff"))
            doc.reindex()
            self._docs[path] = doc
        return doc

    def _locate(self, node_id: str) -> tuple[Doc, CommentedMap, CommentedMap | None]:
        path = self._where.get(node_id)
        if path is None:
            close = difflib.get_close_matches(node_id, self._where, n=3, cutoff=0.6)
            raise UnknownNodeError(
                f"unknown taxonomy id {node_id!r} in {self.root}",
                hint=f"did you mean {', '.join(close)}?" if close else "see `corpus taxonomy show`",
            )
        doc = self._doc(path)
        m, parent = doc.index[node_id]
        return doc, m, parent

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._where

    def file_of(self, node_id: str) -> Path:
        return self._locate(node_id)[0].path

    def _check_new_id(self, node_id: str) -> None:
        if not isinstance(node_id, str) or not SLUG_RE.match(node_id):
            fix = slugify(str(node_id))
            raise TaxonomyError(
                f"id {node_id!r} is not a slug ({SLUG_RULE})",
                hint=f"use {fix!r}" if fix else "pick an id such as 'linear-algebra'",
            )
        if node_id in self._where:
            path = self._where[node_id]
            line = getattr(self._doc(path).index[node_id][0].lc, "line", None)
            where = f"{path}:{line + 1}" if line is not None else str(path)
            raise TaxonomyError(
                f"id {node_id!r} already exists ({where})",
                hint="ids must be unique; pick another id",
            )

    def _mark(self, doc: Doc) -> None:
        self._dirty.add(doc.path)
        self._deleted.discard(doc.path)

    def _live(self, path: Path) -> bool:
        return path not in self._deleted and (path in self._docs or path.exists())

    def _new_file_path(self, node_id: str) -> Path:
        path = self.root / f"{node_id}.yaml"
        if self._live(path):
            raise TaxonomyError(
                f"{path} already exists",
                hint="a new discipline gets its own file named after its id; pick another id",
            )
        return path

    def _new_file(self, path: Path, data: CommentedMap) -> Doc:
        y, _ = new_yaml(None)
        doc = Doc(path, y, data)
        doc.reindex()
        self._docs[path] = doc
        self._texts.setdefault(path, "")
        self._mark(doc)
        return doc

    def _root_levels(self) -> set[Any]:
        levels = set()
        for path in self._texts:
            if path in self._deleted:
                continue
            data = self._docs[path].data if path in self._docs else self._raw.get(path)
            if isinstance(data, dict):
                levels.add(data.get("level"))
        return levels

    def _infer_level(self, parent: CommentedMap | None) -> str | None:
        if parent is None:
            levels = self._root_levels()
            return levels.pop() if len(levels) == 1 else None
        kids = parent.get("children") or []
        sibling_levels = {k.get("level") for k in kids if isinstance(k, dict)}
        if len(sibling_levels) == 1:
            return sibling_levels.pop()
        if not sibling_levels:
            plevel = parent.get("level")
            if plevel in self.levels and self.levels.index(plevel) + 1 < len(self.levels):
                return self.levels[self.levels.index(plevel) + 1]
        return None

    # -- edits --------------------------------------------------------------------------------

    def add_node(
        self,
        parent: str | None,
        id: str,  # noqa: A002 - matches the YAML key and the CLI flag
        name: str,
        description: str | None = None,
        level: str | None = None,
        status: str = "approved",
        weight: float | None = None,
        prerequisites: Iterable[str] = (),
        comment: str | None = None,
    ) -> Path:
        """Add a node as the last child of ``parent`` (in the parent's file).

        ``parent`` None or ``"-"`` makes a new discipline in a new file ``<id>.yaml``. Without
        ``level``, the node takes its siblings' level if they agree (else the level after its
        parent's in ``levels``). ``status`` is written only when it is not ``approved``.
        ``comment`` becomes an end-of-line comment (e.g. who proposed the node). Returns the
        file the node goes into.
        """
        self._check_new_id(id)
        if not isinstance(name, str) or not name.strip():
            raise TaxonomyError(f"node {id!r} needs a non-empty name", hint="pass --name NAME")
        if status not in STATUSES:
            raise TaxonomyError(
                f"status {status!r} is not one of {', '.join(STATUSES)}", hint="use proposed"
            )
        parent_map: CommentedMap | None = None
        doc: Doc | None = None
        if parent is not None and parent != NEW_DISCIPLINE:
            doc, parent_map, _ = self._locate(parent)
        if level is None:
            level = self._infer_level(parent_map)
        new = CommentedMap()
        new["id"] = id
        new["name"] = name
        if description:
            new["description"] = description
        if level:
            new["level"] = level
        if weight is not None:
            new["weight"] = weight
        if status != "approved":
            new["status"] = status
        prereqs = list(prerequisites)
        if prereqs:
            seq = CommentedSeq(prereqs)
            seq.fa.set_flow_style()
            new["prerequisites"] = seq
        if comment:
            new.yaml_add_eol_comment(comment, list(new)[-1])
        if parent_map is None or doc is None:
            doc = self._new_file(self._new_file_path(id), new)
            self._where[id] = doc.path
            self.changes.append(f"added discipline {id!r} in {doc.path}")
            return doc.path
        kids = children_of(parent_map)
        if kids and isinstance(kids[-1], CommentedMap) and kids[-1].fa.flow_style():
            if not comment and "description" not in new:
                new.fa.set_flow_style()  # match siblings written as {id: ..., name: ...}
        attach(doc, parent_map, new, [])
        doc.index[id] = (new, parent_map)
        self._where[id] = doc.path
        self._mark(doc)
        self.changes.append(f"added {id!r} under {parent!r} in {doc.path}")
        return doc.path

    def _detach(
        self, doc: Doc, m: CommentedMap, parent: CommentedMap | None, *, keep_leading: bool
    ) -> list[cm.Comment]:
        """Take ``m`` out of its parent's children (or its whole file if it is a root).

        Returns the comment lines that were just above it (they describe it and move with
        it), unless ``keep_leading``, which leaves them in the file. Comment lines below it
        stay in place either way.
        """
        if parent is None:
            self._deleted.add(doc.path)
            self._dirty.discard(doc.path)
            return cm.pop_head(m)
        kids = parent["children"]
        i = next(k for k, item in enumerate(kids) if item is m)
        block = kids.fa.flow_style() is not True
        leading = cm.pop_leading(parent, "children", kids, i) if block else []
        trailing = cm.pop_trailing(m) if block else []
        if keep_leading:
            trailing = leading + trailing
            leading = []
        del kids[i]
        if kids:
            if i < len(kids):
                cm.set_leading(kids, i, trailing, None)
            else:
                cm.push_after_item(kids, i - 1, trailing)
        else:
            trailing += cm.pop_list_end(kids)
            del parent["children"]
            after_node(doc, parent, trailing)
        self._mark(doc)
        return leading

    def move_node(self, id: str, to: str | None) -> Path:  # noqa: A002
        """Make ``id`` (with its subtree) the last child of ``to``, possibly in another file.

        ``to`` None or ``"-"`` makes it a discipline in its own file. Returns its new file.
        """
        doc, m, parent = self._locate(id)
        subtree = [k["id"] for k, _ in walk_maps(m) if isinstance(k.get("id"), str)]
        if to is None or to == NEW_DISCIPLINE:
            if parent is None:
                raise TaxonomyError(f"{id!r} is already a discipline", hint="nothing to move")
            path = self._new_file_path(id)
            leading = self._detach(doc, m, parent, keep_leading=False)
            cm.set_head(m, leading)
            new_doc = self._new_file(path, m)
            for node_id in subtree:
                self._where[node_id] = new_doc.path
            doc.reindex()
            self.changes.append(f"moved {id!r} to a new discipline file {new_doc.path}")
            return new_doc.path
        if to == id or to in subtree:
            raise TaxonomyError(
                f"cannot move {id!r} under {to!r}: {to!r} is inside {id!r}",
                hint="pick a parent outside the node's own subtree",
            )
        target_doc, target, _ = self._locate(to)
        if parent is target:
            self.changes.append(f"{id!r} is already under {to!r}; nothing to do")
            return doc.path
        leading = self._detach(doc, m, parent, keep_leading=False)
        attach(target_doc, target, m, leading)
        for node_id in subtree:
            self._where[node_id] = target_doc.path
        doc.reindex()
        target_doc.reindex()
        self._mark(target_doc)
        where = "" if target_doc.path == doc.path else f" ({doc.path} -> {target_doc.path})"
        self.changes.append(f"moved {id!r} under {to!r}{where}")
        return target_doc.path

    def rename_node(self, id: str, name: str) -> None:  # noqa: A002
        """Change a node's display name (its id stays: ids are what everything else refers to)."""
        if not isinstance(name, str) or not name.strip():
            raise TaxonomyError(f"new name of {id!r} is empty", hint="pass --name NAME")
        doc, m, _ = self._locate(id)
        old = m.get("name")
        m["name"] = name
        self._mark(doc)
        self.changes.append(f"renamed {id!r}: {old!r} -> {name!r}")

    def set_status(self, ids: Iterable[str], status: str) -> None:
        """Set ``status`` (approved or proposed) on each node in ``ids``."""
        if status not in STATUSES:
            raise TaxonomyError(
                f"status {status!r} is not one of {', '.join(STATUSES)}", hint="use approved"
            )
        for node_id in ids:
            doc, m, _ = self._locate(node_id)
            current = m.get("status", "approved")
            if "status" in m:
                m["status"] = status
            elif status != "approved":
                insert_key(m, "status", status)
            if current != status:
                self._mark(doc)
                self.changes.append(f"{node_id!r}: {current} -> {status}")

    def set_fields(self, id: str, **fields: Any) -> None:  # noqa: A002
        """Set or (with None) remove plain fields: description, level, weight, prerequisites."""
        allowed = {"description", "level", "weight", "prerequisites"}
        doc, m, _ = self._locate(id)
        for key, value in fields.items():
            if key not in allowed:
                raise TaxonomyError(
                    f"cannot set {key!r} this way", hint=f"settable: {', '.join(sorted(allowed))}"
                )
            if value is None or (key == "prerequisites" and not value):
                if key in m:
                    del m[key]
                continue
            if key == "prerequisites":
                value = CommentedSeq(list(value))
                value.fa.set_flow_style()
            if key in m:
                m[key] = value
            else:
                insert_key(m, key, value)
        self._mark(doc)
        self.changes.append(f"updated {', '.join(fields)} of {id!r}")

    def _prerequisite_id(self, node_id: str, pre: str) -> None:
        """Refuse a prerequisite id that is not in the taxonomy (suggesting others, never the
        node itself) or that is the node itself."""
        if pre == node_id:
            raise TaxonomyError(
                f"{node_id!r} cannot be its own prerequisite", hint="name another node"
            )
        if pre not in self._where:
            close = [
                c
                for c in difflib.get_close_matches(pre, self._where, n=4, cutoff=0.6)
                if c != node_id
            ][:3]
            raise UnknownNodeError(
                f"unknown taxonomy id {pre!r} in {self.root}",
                hint=f"did you mean {', '.join(close)}?" if close else "see `corpus taxonomy show`",
            )

    def add_prerequisites(self, id: str, prerequisites: Iterable[str]) -> None:  # noqa: A002
        """Append ``prerequisites`` to ``id``'s list (created in flow style if missing).

        Ids already listed are skipped (and said so in ``changes``); cycles and prerequisites
        on one's own ancestor or descendant are caught by ``save``/``check``.
        """
        wanted = list(dict.fromkeys(prerequisites))
        if not wanted:
            raise TaxonomyError("name at least one prerequisite id", hint="e.g. `algebra`")
        doc, m, _ = self._locate(id)
        for pre in wanted:
            self._prerequisite_id(id, pre)
        pres = m.get("prerequisites")
        if not isinstance(pres, CommentedSeq):
            pres = CommentedSeq()
            pres.fa.set_flow_style()
            insert_key(m, "prerequisites", pres)
        added = [p for p in wanted if p not in pres]
        pres.extend(added)
        already = [p for p in wanted if p not in added]
        if added:
            self._mark(doc)
            self.changes.append(f"{id!r} now requires {names(added)} ({doc.path})")
        if already:
            self.changes.append(f"{id!r} already requires {names(already)}; unchanged")

    def remove_prerequisites(self, id: str, prerequisites: Iterable[str]) -> None:  # noqa: A002
        """Remove ``prerequisites`` from ``id``'s list (the key goes when the list empties).

        An id that is not listed is refused, naming the ones that are.
        """
        wanted = list(dict.fromkeys(prerequisites))
        if not wanted:
            raise TaxonomyError("name at least one prerequisite id", hint="e.g. `algebra`")
        doc, m, _ = self._locate(id)
        pres = m.get("prerequisites")
        listed = [p for p in pres if isinstance(p, str)] if isinstance(pres, list) else []
        missing = [p for p in wanted if p not in listed]
        if missing:
            has = f"its prerequisites are {names(listed)}" if listed else "it has none"
            raise TaxonomyError(
                f"{names(missing)} {'is' if len(missing) == 1 else 'are'} not a prerequisite "
                f"of {id!r}",
                hint=has,
            )
        assert isinstance(pres, list)
        for i in reversed(range(len(pres))):
            if pres[i] in wanted:
                del pres[i]
        if not pres:
            del m["prerequisites"]
        self._mark(doc)
        self.changes.append(f"{id!r} no longer requires {names(wanted)} ({doc.path})")

    def _dependents(self) -> dict[str, list[str]]:
        """prerequisite id -> ids of the nodes listing it, over the current (edited) state."""
        out: dict[str, list[str]] = {}
        for path in self._texts:
            if path in self._deleted:
                continue
            data = self._docs[path].data if path in self._docs else self._raw.get(path)
            for m, _ in walk_maps(data):
                pres = m.get("prerequisites")
                if isinstance(pres, list):
                    for pre in pres:
                        if isinstance(pre, str):
                            out.setdefault(pre, []).append(m.get("id"))
        return out

    def remove_node(self, id: str, cascade: bool = False) -> list[str]:  # noqa: A002
        """Remove a node. Returns the ids removed.

        Without ``cascade`` it refuses if the node has children or is another node's
        prerequisite (naming them). With ``cascade`` the whole subtree goes, and the removed
        ids are dropped from every other node's prerequisites.
        """
        doc, m, parent = self._locate(id)
        subtree = [k["id"] for k, _ in walk_maps(m) if isinstance(k.get("id"), str)]
        removed = set(subtree)
        dependents = self._dependents()
        users = list(
            dict.fromkeys(d for r in subtree for d in dependents.get(r, ()) if d not in removed)
        )
        if not cascade:
            kids = [k.get("id") for k in (m.get("children") or []) if isinstance(k, dict)]
            if kids:
                raise TaxonomyError(
                    f"cannot remove {id!r}: it has children {names(kids)}",
                    hint="move them elsewhere first, or pass --cascade to remove the subtree",
                )
            if users:
                raise TaxonomyError(
                    f"cannot remove {id!r}: it is a prerequisite of {names(users)}",
                    hint="remove it from their prerequisites first, or pass --cascade",
                )
        # The comment lines just above the node describe it: they go with it (as `move`
        # carries them); the lines below it belong to what follows and stay.
        self._detach(doc, m, parent, keep_leading=False)
        doc.reindex()
        for node_id in subtree:
            self._where.pop(node_id, None)
        for user in users:
            if user not in self._where:
                continue
            udoc, um, _ = self._locate(user)
            pres = um.get("prerequisites")
            if not isinstance(pres, list):
                continue
            for i in reversed(range(len(pres))):
                if pres[i] in removed:
                    del pres[i]
            if not pres:
                del um["prerequisites"]
            self._mark(udoc)
            self.changes.append(f"dropped removed prerequisites from {user!r}")
        what = f"{id!r} and {len(subtree) - 1} descendant(s)" if len(subtree) > 1 else repr(id)
        self.changes.append(f"removed {what} from {doc.path}")
        return subtree

    # -- writing ------------------------------------------------------------------------------

    def _result_texts(self) -> dict[Path, str]:
        texts = {p: t for p, t in self._texts.items() if p not in self._deleted}
        for path in self._dirty:
            texts[path] = self._docs[path].dump()
        return dict(sorted(texts.items()))

    def diff(self) -> str:
        """Unified diff of what ``save`` would write."""
        new = self._result_texts()
        out: list[str] = []
        for path in sorted(set(self._texts) | set(new)):
            old_text = self._texts.get(path, "") if path in self._texts else ""
            new_text = new.get(path, "")
            if old_text != new_text:
                out.extend(
                    difflib.unified_diff(
                        old_text.splitlines(keepends=True),
                        new_text.splitlines(keepends=True),
                        fromfile=f"a/{path}",
                        tofile=f"b/{path}",
                    )
                )
        return "".join(out)

    def check(self) -> tuple[list[Problem], Taxonomy | None]:
        """Validate the edited taxonomy without writing."""
        return check_texts(self._result_texts(), self.root, levels=self.levels)

    def save(self) -> Taxonomy:
        """Validate the edited taxonomy, then write the changed files atomically.

        Raises ``ValidationError`` (nothing written) when the result would be invalid.
        Returns the new taxonomy.
        """
        texts = self._result_texts()
        problems, tax = check_texts(texts, self.root, levels=self.levels)
        if problems or tax is None:
            raise ValidationError(
                [
                    Problem(
                        "edit refused, nothing was written: the taxonomy would become invalid",
                        hint="the problems below refer to the edited files",
                    ),
                    *problems,
                ]
            )
        # Write new and changed files before deleting emptied ones, so an interruption
        # leaves a duplicate id (which validate reports) rather than a lost subtree.
        for path, text in texts.items():
            if self._texts.get(path) != text or not path.exists():
                atomic_write_text(path, text)
        for path in self._deleted:
            if path.exists():
                path.unlink()
        self._texts = dict(texts)
        self._raw = {p: d for p, d in self._raw.items() if p in texts}
        self._dirty.clear()
        self._deleted.clear()
        return tax
