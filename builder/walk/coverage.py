"""Coverage of a walk: how many units landed on each node, session and level."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from builder.records import Unit

if TYPE_CHECKING:
    from builder.taxonomy import Taxonomy

__all__ = ["Coverage"]


@dataclass
class Coverage:
    """How many units landed where.

    ``units``: node id -> units whose node (``Unit.topic``) it is; ``subtree``: node id ->
    units at or below it (rolled up along ``taxonomy_path``); ``sessions``: (subject id,
    session index) -> units built around that session; ``per_level``: level -> units.
    ``expected`` lists the nodes the walk selected, so uncovered ones show as zeros.
    """

    units: Counter[str] = field(default_factory=Counter)
    subtree: Counter[str] = field(default_factory=Counter)
    sessions: Counter[tuple[str, int]] = field(default_factory=Counter)
    per_level: Counter[str] = field(default_factory=Counter)
    expected: list[str] = field(default_factory=list)
    total: int = 0

    def add(self, unit: Unit) -> None:
        self.total += 1
        self.units[unit.topic] += 1
        for node_id in unit.taxonomy_path.split("/"):
            self.subtree[node_id] += 1
        if unit.session_index is not None:
            self.sessions[(unit.topic, unit.session_index)] += 1
        self.per_level[unit.level or "(unset)"] += 1

    @property
    def uncovered(self) -> list[str]:
        """Selected nodes without any unit yet."""
        return [n for n in self.expected if self.units[n] == 0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "units": dict(self.units),
            "subtree": dict(self.subtree),
            "sessions": {f"{s}#{i}": n for (s, i), n in sorted(self.sessions.items())},
            "per_level": dict(self.per_level),
            "uncovered": self.uncovered,
        }

    def rows(self, tax: Taxonomy | None = None) -> list[dict[str, Any]]:
        """One row per node with units at or below it (or selected), in taxonomy order."""
        ids = set(self.subtree) | set(self.expected)
        if tax is None:
            order = sorted(ids)
            return [{"id": i, "units": self.units[i], "subtree": self.subtree[i]} for i in order]
        rows = []
        for node in tax:
            if node.id in ids:
                rows.append(
                    {
                        "id": node.id,
                        "name": node.name,
                        "level": node.level,
                        "depth": node.depth,
                        "units": self.units[node.id],
                        "subtree": self.subtree[node.id],
                    }
                )
        return rows

    def table(self, tax: Taxonomy | None = None) -> str:
        """A plain-text table: node (indented by depth), level, units at it, units below it."""
        rows = self.rows(tax)
        labels = ["  " * r.get("depth", 0) + r["id"] for r in rows]
        width = max([len("node"), *map(len, labels)])
        lwidth = max([len("level"), *(len(r.get("level") or "") for r in rows)])
        lines = [f"{'node':<{width}}  {'level':<{lwidth}}  {'units':>7}  {'subtree':>7}"]
        for label, r in zip(labels, rows, strict=True):
            lines.append(
                f"{label:<{width}}  {(r.get('level') or ''):<{lwidth}}  "
                f"{r['units']:>7}  {r['subtree']:>7}"
            )
        if self.sessions:
            lines.append("")
            lines.append("sessions (subject#index: units)")
            for (subject, index), n in sorted(self.sessions.items()):
                lines.append(f"  {subject}#{index}: {n}")
        lines.append("")
        lines.append(
            f"total units: {self.total}; selected nodes: {len(self.expected)}; "
            f"uncovered: {len(self.uncovered)}"
        )
        return "\n".join(lines) + "\n"
