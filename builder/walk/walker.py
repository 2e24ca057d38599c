"""The walker itself: ``Walk`` (slots, rounds, units) and ``walk_topics`` (see ``builder.walk``
for the sampling rules)."""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import xxhash

from builder.errors import TaxonomyError
from builder.records import Unit
from builder.walk.coverage import Coverage
from builder.walk.sampling import (
    _TWO64,
    ORDERS,
    _difficulty,
    _Rng,
    _seed64,
    _uniform,
    description_phrases,
)

if TYPE_CHECKING:
    from builder.settings.syllabus import SyllabusSettings
    from builder.settings.walk import WalkSettings
    from builder.syllabus import Syllabus
    from builder.taxonomy import Node, Taxonomy

__all__ = ["Walk", "coverage", "walk_from_settings", "walk_topics"]


class _Slot:
    """One thing to cover: a node, or one session of a subject's syllabus."""

    __slots__ = ("node", "session", "weight", "key")

    def __init__(self, node: str, session: int | None, weight: float) -> None:
        self.node = node
        self.session = session
        self.weight = weight
        self.key = node if session is None else f"{node}#{session}"


def _as_taxonomy(tax: Taxonomy | str | os.PathLike[str]) -> Taxonomy:
    """A loaded taxonomy as is; a directory or file path loaded."""
    from builder.taxonomy import Taxonomy as _Taxonomy

    if isinstance(tax, _Taxonomy):
        return tax
    if not isinstance(tax, (str, os.PathLike)):
        raise TypeError(f"walk_topics needs a Taxonomy or a path, not {type(tax).__name__}")
    from builder.taxonomy import load_taxonomy

    return load_taxonomy(tax)


class Walk(Iterable[Unit]):
    """Walk the taxonomy: a lazy, deterministic, re-iterable stream of generation ``Unit``s
    (also importable as ``walk_topics``). Each iteration starts from the first unit.

    ``tax`` is a loaded ``Taxonomy`` or the path of a taxonomy directory (or file). Bounded by
    ``limit`` units, ``token_budget`` (each unit costs ``tokens_per_unit``, a number or a
    function of the unit) or ``rounds`` (1 = every slot exactly once); with none of them, one
    round, unless ``endless`` (then it never ends). Iterating the returned ``Walk`` again
    starts it again. ``subtree`` (ids), ``level`` and ``statuses`` select nodes;
    ``syllabus_statuses`` (default: ``statuses``) selects which syllabi are used, ``syllabi``
    may be ``False`` (topic leaves only) or a mapping subject id -> ``Syllabus``.
    ``order`` is ``random`` or ``curriculum``. ``syllabus_settings`` (the ``[syllabus]``
    section) sets the bounds syllabus files are validated against. Raises ``TaxonomyError``
    for unknown ids or levels and when the selection is empty, and ``ValidationError`` for an
    invalid syllabus. See the module docstring for the sampling rules.

    Attributes describing the selection are set up front: ``slots`` (how many things one
    round covers), ``syllabi`` (subject id -> syllabus used), ``ignored_syllabi`` (subjects
    whose syllabus was skipped for its status). ``coverage()`` reports units yielded so far.
    """

    def __init__(
        self,
        tax: Taxonomy | str | os.PathLike[str],
        *,
        seed: int = 0,
        limit: int | None = None,
        token_budget: float | None = None,
        tokens_per_unit: float | Callable[[Unit], float] = 1500.0,
        rounds: int | None = None,
        endless: bool = False,
        subtree: Iterable[str] | str | None = None,
        level: str | None = None,
        statuses: Sequence[str] = ("approved",),
        syllabus_statuses: Sequence[str] | None = None,
        syllabi: Mapping[str, Syllabus] | bool = True,
        order: str = "random",
        sessions_per_unit: tuple[int, int] = (1, 2),
        concepts_per_unit: tuple[int, int] = (1, 5),
        syllabus_settings: SyllabusSettings | None = None,
    ) -> None:
        tax = _as_taxonomy(tax)
        if order not in ORDERS:
            raise TaxonomyError(f"unknown walk order {order!r}", hint="use random or curriculum")
        for name, value in (("limit", limit), ("token_budget", token_budget), ("rounds", rounds)):
            if value is not None and value < 0:
                raise TaxonomyError(f"{name} must not be negative (got {value})")
        for name, (lo, hi) in (
            ("sessions_per_unit", sessions_per_unit),
            ("concepts_per_unit", concepts_per_unit),
        ):
            if not 1 <= lo <= hi:
                raise TaxonomyError(f"{name} must be (low, high) with 1 <= low <= high")
        if isinstance(subtree, str):
            subtree = [subtree]
        if rounds is None and limit is None and token_budget is None and not endless:
            rounds = 1  # the one default, shared with `corpus walk` and builds
        self.tax = tax
        self.seed = int(seed)
        self._seed64 = _seed64(self.seed)
        self.limit = limit
        self.token_budget = token_budget
        self.tokens_per_unit = tokens_per_unit
        self.rounds = rounds
        self.order = order
        self.level = level
        self.statuses = tuple(statuses)
        self.syllabus_statuses = tuple(
            syllabus_statuses if syllabus_statuses is not None else statuses
        )
        self.sessions_per_unit = sessions_per_unit
        self.concepts_per_unit = concepts_per_unit
        self.syllabus_settings = syllabus_settings
        self.subtree_ids = [tax[s].id for s in subtree] if subtree else []
        self.yielded = 0
        self.tokens = 0.0
        self._coverage = Coverage()
        self._selected: dict[str, bool] = {}
        self._weights: dict[str, float] = {}
        self.syllabi: dict[str, Syllabus] = {}
        self.ignored_syllabi: list[str] = []
        self._slots: list[_Slot] = self._build_slots(syllabi)
        self._coverage.expected = list(dict.fromkeys(s.node for s in self._slots))
        self._subject_cache: dict[str, Node | None] = {}
        self._positions: dict[str, dict[str, int]] = {}
        self._contexts: dict[str, tuple[Node, str]] = {}

    # -- selection ----------------------------------------------------------------------------

    def _select(self) -> list[Node]:
        tax = self.tax
        if self.subtree_ids:
            nodes: list[Node] = []
            seen: set[str] = set()
            for sid in self.subtree_ids:
                for n in tax.subtree(sid):
                    if n.id not in seen:
                        seen.add(n.id)
                        nodes.append(n)
        else:
            nodes = list(tax)
        ok = self._selected
        weights = self._weights
        statuses = frozenset(self.statuses)
        for n in nodes:  # preorder: a parent is decided before its children
            parent = n.parent
            if parent is None:
                parent_ok, parent_w = True, 1.0
            else:
                parent_ok = ok.get(parent)
                if parent_ok is None:  # top of a subtree: look at the ancestors once
                    above = tax.ancestors(n.id)
                    parent_ok = all(a.status in statuses for a in above)
                    parent_w = math.prod(a.weight for a in above)
                else:
                    parent_w = weights.get(parent, 0.0)
            selected = parent_ok and n.status in statuses
            ok[n.id] = selected
            if selected:
                weights[n.id] = parent_w * n.weight
        return [n for n in nodes if ok[n.id]]

    def _build_slots(self, syllabi: Mapping[str, Syllabus] | bool) -> list[_Slot]:
        from builder.syllabus import (
            SUBJECT_LEVEL,
            SYLLABUS_STATUSES,
            is_subject,
            load_syllabi,
            subject_of,
            syllabus_files,
        )

        tax = self.tax
        selected = self._select()
        if self.level is not None:
            candidates = [n for n in selected if n.level == self.level]
            if not candidates:
                levels = sorted({n.level for n in tax if n.level})
                raise TaxonomyError(
                    f"no selected node has level {self.level!r}",
                    hint=f"levels in the taxonomy: {', '.join(levels) or '(none set)'}",
                )
        else:
            has_child = {n.parent for n in selected}
            # A discipline with nothing under it is an empty file, not a topic to write about.
            candidates = [
                n
                for n in selected
                if n.id not in has_child and (n.parent is not None or n.children)
            ]

        # Syllabi of selected subjects, when asked for.
        usable: dict[str, Syllabus] = {}
        if syllabi is True:
            stems = {p.stem for p in syllabus_files(tax)}
            wanted = [s for s in stems if self._selected.get(s)]
            loaded = (
                load_syllabi(tax, wanted, self.syllabus_settings, statuses=SYLLABUS_STATUSES)
                if wanted
                else {}
            )
            for sid, syl in loaded.items():
                if syl.status in self.syllabus_statuses:
                    usable[sid] = syl
                else:
                    self.ignored_syllabi.append(sid)
            self.ignored_syllabi.sort()
        elif syllabi:
            usable = {k: v for k, v in syllabi.items() if self._selected.get(k)}

        weights = self._weights
        if not usable:  # no syllabus anywhere: one slot per candidate (the common fast path)
            slots = [_Slot(n.id, None, weights[n.id]) for n in candidates]
            candidates = []
        else:
            slots = []
        done_subjects: set[str] = set()
        parent_subject: dict[str | None, Node | None] = {}
        for n in candidates:
            subject: Node | None = None
            if usable:
                if self.level is not None:
                    subject = n if is_subject(tax, n.id) else None
                elif (n.level or "").lower() == SUBJECT_LEVEL:
                    subject = n
                elif not n.children and n.parent is not None:
                    # Leaves below the subject level share their parent's subject.
                    if n.parent not in parent_subject:
                        parent_subject[n.parent] = subject_of(tax, n.id)
                    subject = parent_subject[n.parent]
                else:
                    subject = subject_of(tax, n.id)
            if subject is not None and subject.id in usable:
                if subject.id not in done_subjects:
                    done_subjects.add(subject.id)
                    syl = usable[subject.id]
                    self.syllabi[subject.id] = syl
                    w = self._weights[subject.id]
                    slots.extend(_Slot(subject.id, j, w) for j in range(len(syl.sessions)))
                continue
            slots.append(_Slot(n.id, None, self._weights[n.id]))
        if not slots:
            where = f" under {', '.join(self.subtree_ids)}" if self.subtree_ids else ""
            raise TaxonomyError(
                f"the walk selects nothing{where} with status {'/'.join(self.statuses)}",
                hint="approve nodes (`corpus taxonomy review`), pass --include-proposed, or "
                "check --subtree/--level",
            )
        return slots

    @property
    def slots(self) -> int:
        """How many slots (leaves or syllabus sessions) one round covers."""
        return len(self._slots)

    # -- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Unit]:
        """A new pass from the first unit (counters and coverage start again)."""
        self.yielded = 0
        self.tokens = 0.0
        expected = self._coverage.expected
        self._coverage = Coverage(expected=expected)
        return self._generate()

    def coverage(self) -> Coverage:
        """Units per node (and per session, level) of everything yielded so far."""
        return self._coverage

    def _round_order(self, slots: list[int], round_: int) -> list[int]:
        if self.order == "curriculum":
            rank = _curriculum_rank(self.tax)
            return sorted(
                slots, key=lambda i: (rank[self._slots[i].node], self._slots[i].session or 0)
            )
        keyed = [(self._es_key(i, round_), i) for i in slots]
        keyed.sort()
        return [i for _, i in keyed]

    def _es_key(self, i: int, round_: int) -> float:
        """Efraimidis-Spirakis key, negated so that smaller comes first."""
        s = self._slots[i]
        return -math.log(_uniform(self._seed64, f"{s.key}\x1f{round_}")) / s.weight

    def _round0(self) -> Iterator[int]:
        n = len(self._slots)
        if self.order == "curriculum":
            yield from self._round_order(list(range(n)), 0)
            return
        # A heap instead of a sort: the first unit comes after O(n), not O(n log n).
        # (``_es_key`` inlined: this loop is most of the time to the first unit.)
        digest, log, seed, two64 = xxhash.xxh64_intdigest, math.log, self._seed64, _TWO64
        heap = [
            (-log((digest(f"{s.key}\x1f0".encode(), seed=seed) + 0.5) / two64) / s.weight, i)
            for i, s in enumerate(self._slots)
        ]
        heapq.heapify(heap)
        while heap:
            yield heapq.heappop(heap)[1]

    def _generate(self) -> Iterator[Unit]:
        if self.rounds == 0:
            return
        occurrences = [0] * len(self._slots)
        for i in self._round0():
            unit = self._emit(i, occurrences)
            if unit is None:
                return
            yield unit
        if self.rounds is not None and self.rounds <= 1:
            return
        w_max = max(s.weight for s in self._slots)
        rel = [s.weight / w_max for s in self._slots]
        offset = [_uniform(self._seed64, f"{s.key}\x1foffset") for s in self._slots]

        def round_of(i: int, k: int) -> int:
            # The round in which slot i gets its k-th extra unit (k >= 1).
            return max(1, math.ceil((k - offset[i]) / rel[i]))

        heap = [(round_of(i, 1), i) for i in range(len(self._slots))]
        heapq.heapify(heap)
        while heap:
            round_ = heap[0][0]
            if self.rounds is not None and round_ >= self.rounds:
                return
            batch: list[int] = []
            while heap and heap[0][0] == round_:
                _, i = heapq.heappop(heap)
                batch.append(i)
            for i in batch:
                heapq.heappush(heap, (round_of(i, occurrences[i] + 1), i))
            for i in self._round_order(batch, round_):
                unit = self._emit(i, occurrences)
                if unit is None:
                    return
                yield unit

    def _emit(self, i: int, occurrences: list[int]) -> Unit | None:
        if self.limit is not None and self.yielded >= self.limit:
            return None
        unit = self._make_unit(self._slots[i], occurrences[i])
        if self.token_budget is not None:
            cost = (
                self.tokens_per_unit(unit)
                if callable(self.tokens_per_unit)
                else float(self.tokens_per_unit)
            )
            if self.tokens + cost > self.token_budget:
                return None
            self.tokens += cost
        occurrences[i] += 1
        self.yielded += 1
        self._coverage.add(unit)
        return unit

    # -- units --------------------------------------------------------------------------------

    def _subject(self, node: Node) -> Node | None:
        # Leaves below the subject level share their parent's subject: cache by parent.
        own = (node.level or "").lower() == "subject"
        below = not node.children and node.parent is not None and not own
        key = node.parent if below else node.id
        if key not in self._subject_cache:
            from builder.syllabus import subject_of

            self._subject_cache[str(key)] = subject_of(self.tax, node.id)
        return self._subject_cache[str(key)]

    def _where(self, node: Node) -> tuple[Node, str]:
        """(discipline, taxonomy path) of a node, from a per-parent cache."""
        parent = node.parent
        if parent is None:
            return node, node.id
        ctx = self._contexts.get(parent)
        if ctx is None:
            ctx = (self.tax.discipline_of(parent), self.tax.path_ids(parent))
            self._contexts[parent] = ctx
        return ctx[0], f"{ctx[1]}/{node.id}"

    def _position(self, node: Node) -> tuple[int, int]:
        """(index among its siblings, number of siblings), cached per parent."""
        parent = str(node.parent)
        pos = self._positions.get(parent)
        if pos is None:
            pos = {c: i for i, c in enumerate(self.tax[parent].children)}
            self._positions[parent] = pos
        return pos[node.id], len(pos)

    def _make_unit(self, slot: _Slot, occurrence: int) -> Unit:
        tax = self.tax
        rng = _Rng(
            xxhash.xxh64_intdigest(f"{slot.key}\x1f{occurrence}".encode(), seed=self._seed64)
        )
        node = tax[slot.node]
        discipline, taxonomy_path = self._where(node)
        c_lo, c_hi = self.concepts_per_unit
        if slot.session is not None:
            syl = self.syllabi[slot.node]
            n = len(syl.sessions)
            j = slot.session
            s_lo, s_hi = self.sessions_per_unit
            count = rng.randint(min(s_lo, n), min(s_hi, n))
            chosen = [j]
            while len(chosen) < count:  # extend to adjacent sessions (GLAN: 1-2 sessions)
                sides = [k for k in (min(chosen) - 1, max(chosen) + 1) if 0 <= k < n]
                chosen.append(rng.choice(sides))
            chosen.sort()
            own = list(syl.sessions[j].concepts)
            pool: list[str] = []
            for k in chosen:
                pool.extend(c for c in syl.sessions[k].concepts if c not in pool)
            k_concepts = rng.randint(min(c_lo, len(pool)), min(c_hi, len(pool)))
            first = rng.choice(own)
            rest = [c for c in pool if c != first]
            picked = {first, *rng.sample(rest, k_concepts - 1)} if k_concepts > 1 else {first}
            concepts = tuple(c for c in pool if c in picked)
            titles = [syl.sessions[k].title for k in chosen]
            goals = [g for k in chosen for g in syl.sessions[k].goals]
            subject = node
            session = "; ".join(titles)
            topic_name = session
            description = "; ".join(goals) or None
            difficulty = _difficulty(max(chosen), n)
            nodes = (slot.node, tuple(chosen))
        else:
            extra = description_phrases(node.description)
            if node.children:
                extra += [c.name for c in tax.children(node.id) if self._selected.get(c.id, False)]
            extra = [e for e in dict.fromkeys(extra) if e.casefold() != node.name.casefold()]
            available = 1 + len(extra)  # the node's own name always comes first
            k_concepts = rng.randint(min(c_lo, available), min(c_hi, available))
            picked = set(rng.sample(extra, k_concepts - 1)) if k_concepts > 1 else set()
            concepts = (node.name, *(e for e in extra if e in picked))
            subject = self._subject(node) or node
            session = None
            topic_name = node.name
            description = node.description
            if node.parent is None:
                difficulty = _difficulty(0, 1)
            else:
                position, count = self._position(node)
                difficulty = _difficulty(position, count)
            nodes = (slot.node, ())
        unit_id = hashlib.sha256(
            "\x1f".join(
                (
                    str(self.seed),
                    str(occurrence),
                    nodes[0],
                    ",".join(map(str, nodes[1])),
                    "\x1e".join(concepts),
                )
            ).encode("utf-8")
        ).hexdigest()[:16]
        return Unit(
            unit_id=unit_id,
            discipline=discipline.id,
            subject=subject.id,
            topic=node.id,
            taxonomy_path=taxonomy_path,
            discipline_name=discipline.name,
            subject_name=subject.name,
            topic_name=topic_name,
            concepts=concepts,
            session=session,
            session_index=slot.session,
            difficulty=difficulty,
            level=node.level,
            description=description,
            seed=self.seed,
        )


# Per-taxonomy memo, held beside (not on) the caller's object and dropped with it.
_RANKS: weakref.WeakKeyDictionary[Taxonomy, dict[str, int]] = weakref.WeakKeyDictionary()


def _curriculum_rank(tax: Taxonomy) -> dict[str, int]:
    rank = _RANKS.get(tax)
    if rank is None:
        rank = {n.id: i for i, n in enumerate(tax.curriculum_order())}
        _RANKS[tax] = rank
    return rank


# ``walk_topics`` is ``Walk`` itself: one signature, one set of defaults, typed for callers.
walk_topics = Walk


def walk_from_settings(
    tax: Taxonomy,
    settings: WalkSettings,
    syllabus_settings: SyllabusSettings | None = None,
    **overrides: Any,
) -> Walk:
    """``walk_topics`` with the ``[walk]`` (and ``[syllabus]``) sections of corpus.toml
    (keyword overrides win)."""
    statuses = ("approved", "proposed") if settings.include_proposed else ("approved",)
    kwargs: dict[str, Any] = {
        "seed": settings.seed,
        "limit": settings.limit,
        "token_budget": settings.token_budget,
        "tokens_per_unit": settings.tokens_per_unit,
        "rounds": settings.rounds,
        "subtree": settings.subtree or None,
        "level": settings.level,
        "statuses": statuses,
        "syllabi": settings.use_syllabi,
        "order": settings.order,
        "sessions_per_unit": tuple(settings.sessions_per_unit),
        "concepts_per_unit": tuple(settings.concepts_per_unit),
        "syllabus_settings": syllabus_settings,
    }
    kwargs.update({k: v for k, v in overrides.items()})
    return walk_topics(tax, **kwargs)


def coverage(source: Walk | Iterable[Unit]) -> Coverage:
    """Units per node of a walk (what it has yielded so far) or of any iterable of units.

    An iterable is consumed. Only a ``Walk`` knows which nodes it selected, so only its
    coverage lists uncovered nodes (as zeros); ``Coverage.table(tax)`` prints either.
    """
    if isinstance(source, Walk):
        return source.coverage()
    cov = Coverage()
    for unit in source:
        cov.add(unit)
    return cov
