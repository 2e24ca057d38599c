"""The topic walker: a seeded, weighted, stratified, lazy stream of generation units.

::

    from builder import load_taxonomy, walk_topics
    tax = load_taxonomy("taxonomy")
    walk = walk_topics(tax, seed=1, limit=100, subtree=["mathematics"])
    for unit in walk:                      # builder.records.Unit
        print(unit.unit_id, unit.taxonomy_path, unit.concepts)
    print(walk.coverage().table(tax))      # units per node so far

**What is walked.** The walk covers *slots*. A subject with a usable syllabus (approved by
default, see ``builder.syllabus``) contributes one slot per class session, and its topic
leaves are not walked separately (the syllabus was written to cover them); every other
selected leaf is one slot. With ``level``, the nodes of that level are the slots instead of
the leaves (a subject with a syllabus still contributes its sessions). A node is selected when
it lies in ``subtree`` (default: everywhere) and it and all its ancestors have a status in
``statuses``; a selected node whose children are all unselected counts as a leaf.

**Units** follow GLAN's sampling. A session slot gives units made of that session plus, half
of the time, an adjacent one (``sessions_per_unit`` = 1-2), and 1-5 key concepts drawn from
them (``concepts_per_unit``), at least one from the slot's own session. A leaf slot gives the
leaf's name plus 0-4 concepts drawn from its description's phrases (or, for a non-leaf
``level`` slot, its children's names). ``difficulty`` is the position in the syllabus
(first third basic, last third advanced), or the node's position among its siblings
(taxonomies list topics in teaching order).

**Order and weights.** Round 0 covers every slot exactly once, so nothing repeats before
everything is covered. A slot's weight is the product of ``weight`` along its path (a
session weighs what its subject weighs). In later rounds the heaviest slots get one unit per
round and a slot of relative weight ``a`` gets one every ``1/a`` rounds (randomised rounding,
so after ``R`` rounds each slot has ``1 + floor(R*a + offset)`` units: counts stay within one
unit of proportional). Inside a round the order is a weighted random permutation
(Efraimidis-Spirakis keys ``u**(1/w)``) or, with ``order="curriculum"``, the taxonomy's
curriculum order (prerequisites, with their subtrees, first; sessions in syllabus order).

**Determinism and stability.** Every random choice comes from xxhash of ``(seed, slot,
occurrence)``, never from Python's ``hash()`` or a shared generator, so the same seed gives
the same units in every process, and adding a node leaves the units of other slots unchanged
(only their interleaving moves). ``unit_id`` is the first 16 hex digits of the sha256 of
``(seed, occurrence, node, sessions, concepts)``.

**Bounds.** ``limit`` units, a ``token_budget`` or ``rounds``; with none of them a walk is
one round (every slot once), as ``corpus walk`` and builds do. ``endless=True`` lifts that
default: the walk then goes on until the caller stops.

**Iterating.** A ``Walk`` is re-iterable: each ``for`` loop (each ``iter(walk)``) starts the
same deterministic walk from its first unit, and ``coverage()`` counts the latest pass.

**Laziness.** Setting up costs one pass over the selected nodes (and one read per usable
syllabus); units are made one at a time as they are consumed, and later rounds only touch
the slots they schedule (a heap), so a 100,000-node taxonomy starts yielding at once.
"""

from __future__ import annotations

from builder.walk.coverage import Coverage
from builder.walk.sampling import DIFFICULTIES, ORDERS, description_phrases
from builder.walk.walker import Walk, coverage, walk_from_settings, walk_topics

__all__ = [
    "DIFFICULTIES",
    "ORDERS",
    "Coverage",
    "Walk",
    "coverage",
    "description_phrases",
    "walk_from_settings",
    "walk_topics",
]
