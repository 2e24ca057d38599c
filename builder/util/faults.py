"""Named fault points: a deterministic place for tests to kill a build.

``CORPUS_FAULT=<point>:<n>`` makes the process SIGKILL itself the ``n``-th time it passes
``fault_point("<point>")`` (as ``kill -9`` would: no cleanup of any kind). Kill tests use it
instead of sleeping and hoping the signal lands mid-stage. ``<point>:<n>:INT`` sends SIGINT
instead (what Ctrl-C sends), so an interrupt test stops the build at a known point too.
Unset (always, outside those tests), a fault point is one dictionary lookup.

Points: ``generate.journal`` (after a journal file of results is written),
``llm.cache.commit`` (after the LLM cache committed a batch of outcomes),
``dedup.piece`` (the dedup parent received a finished signature piece), ``dedup.signatures``
(every piece's signatures computed, no result written), ``assemble.shard`` (after a
shard is written), ``assemble.manifest`` (manifest written, card not yet),
``stage.marked`` (after any stage's marker is written), ``stage.marked.<stage>`` (after
that stage's marker is written), ``partition.done`` (after a
partitioned stage recorded a finished input partition, on the driver), ``follow.done``
(after a follower recorded a task it ran while generate was running).
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL (or SIGINT) this process here if ``CORPUS_FAULT`` names this point and count."""
    spec = os.environ.get("CORPUS_FAULT")
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    count, _, sig = rest.partition(":")
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGINT if sig == "INT" else signal.SIGKILL)
