"""Verification: check generated exercises by running or recomputing them.

* Code exercises: the reference solution runs against the generated tests in a sandboxed
  subprocess (``builder.verify.sandbox``: CPU/wall/memory/file/output limits, no network, an
  empty temporary directory, an audit hook that ends the run on file access outside it,
  sockets, fork or subprocesses). The subprocess is a child forked from a pre-started sandbox
  server (``builder.verify.pool``), so a check costs a fork, not an interpreter start.
* Quantitative exercises: the final answer is parsed and compared with sympy against the
  value the worked solution ends on and, when a model is given, an independent second sample
  (``builder.verify.quant``). The comparison runs in a child of a sandbox server that has
  sympy loaded, under the same wall/CPU/memory limits; the model is asked from this process.
* Anything else (conceptual exercises, sections) is not checkable: ``verified`` None.

Every document gets a ``Verdict``; a failure always carries a reason from
``FAILURE_REASONS`` and a short detail, so rejected documents can be counted and shown.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

from builder.llm.base import LLM
from builder.records import ChatResult
from builder.settings.filters import VerifySettings
from builder.verify.code import verify_code
from builder.verify.errors import SandboxError
from builder.verify.pool import shutdown_pools
from builder.verify.quant import second_sample_request, verify_quantitative
from builder.verify.sandbox import (
    detect_launcher,
    probe_sandbox,
    run_in_sandbox,
    run_quant_in_sandbox,
    sandbox_pools,
)
from builder.verify.verdict import FAILURE_REASONS, REASONS, Verdict, failed, unchecked

__all__ = [
    "FAILURE_REASONS",
    "REASONS",
    "SandboxError",
    "Verdict",
    "detect_launcher",
    "probe_sandbox",
    "run_in_sandbox",
    "sandbox_pools",
    "shutdown_pools",
    "verify_document",
    "verify_documents",
]

CHUNK = 64


def _kind(doc: dict[str, Any]) -> str | None:
    if doc.get("kind") != "exercise":
        return None
    kind = doc.get("exercise_type")
    return kind if kind in ("code", "quantitative") else None


def _verify(
    doc: dict[str, Any],
    settings: VerifySettings,
    *,
    llm: LLM | None = None,
    sample: ChatResult | None = None,
) -> Verdict:
    if not settings.enabled:
        return unchecked("verification is disabled ([verify] enabled = false)")
    kind = _kind(doc)
    if kind is None:
        what = doc.get("exercise_type") if doc.get("kind") == "exercise" else doc.get("kind")
        return unchecked(f"{what or 'this'} documents are not checkable")
    structured = doc.get("structured")
    if not isinstance(structured, dict):
        return unchecked("the document has no structured exercise to check")
    if kind == "code":
        return verify_code(structured, settings)
    if not settings.sandbox_pool:
        return verify_quantitative(doc, settings, sample=sample, llm=llm)
    if sample is None and llm is not None and settings.second_sample:
        sample = llm.complete(second_sample_request(doc, settings))
    return _quantitative_in_sandbox(doc, settings, sample)


def _quantitative_in_sandbox(
    doc: dict[str, Any], settings: VerifySettings, sample: ChatResult | None
) -> Verdict:
    """The sympy comparison in a sandbox child: a hostile answer that slips past the parser's
    bounds costs a timeout or memory verdict, not a hung or bloated builder."""
    res = run_quant_in_sandbox(doc, settings, sample)
    if res.status == "verdict":
        return Verdict(**res.info["verdict"])
    reason = res.status if res.status in FAILURE_REASONS else "crashed"
    return failed(reason, f"the answer check did not finish: {res.detail}", "sympy")


def verify_document(
    doc: dict[str, Any], settings: VerifySettings, *, llm: LLM | None = None
) -> Verdict:
    """Check one document (see the module docstring); never raises for a bad document.

    ``llm`` enables the independent second sample for quantitative exercises (when
    ``settings.second_sample``). Raises ``SandboxError`` only when the sandbox itself cannot
    run on this machine, which would otherwise reject every code exercise.
    """
    return _verify(doc, settings, llm=llm)


def _second_samples(
    docs: list[dict[str, Any]], settings: VerifySettings, llm: LLM | None
) -> dict[int, ChatResult]:
    """Ask the model for every quantitative document of a chunk at once (concurrent engine)."""
    if llm is None or not settings.second_sample or not settings.enabled:
        return {}
    wanted: dict[str, int] = {}
    requests = []
    for i, doc in enumerate(docs):
        if _kind(doc) == "quantitative" and isinstance(doc.get("structured"), dict):
            request = second_sample_request(doc, settings)
            if request.id in wanted:  # two documents with one id: ask once per document
                request = dataclasses.replace(request, id=f"{request.id}:{i}")
            wanted[request.id] = i
            requests.append(request)
    if not requests:
        return {}
    return {wanted[r.request_id]: r for r in llm.run(requests) if r.request_id in wanted}


def verify_documents(
    docs: Iterable[dict[str, Any]],
    settings: VerifySettings,
    *,
    llm: LLM | None = None,
    workers: int | None = None,
) -> Iterator[tuple[dict[str, Any], Verdict]]:
    """Check many documents, ``workers`` sandboxes at a time; yields ``(doc, verdict)`` in
    input order as soon as each one (and all before it) is done.

    Documents are taken in chunks of 64: the chunk's second-sample requests go to the model
    together (so a concurrent engine overlaps them), then its checks run on a thread pool
    (each check waits on its own sandboxed process, so threads are enough; each thread keeps
    one pool server busy, so ``workers`` checks run at once).
    """
    n = workers or settings.workers or min(2, os.cpu_count() or 1)
    iterator = iter(docs)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="verify") as pool:
        while True:
            chunk = list(islice(iterator, CHUNK))
            if not chunk:
                return
            samples = _second_samples(chunk, settings, llm)
            pending: deque[tuple[dict[str, Any], Future[Verdict]]] = deque()
            for i, doc in enumerate(chunk):
                fut = pool.submit(_verify, doc, settings, sample=samples.get(i))
                pending.append((doc, fut))
            try:
                while pending:
                    doc, fut = pending.popleft()
                    yield doc, fut.result()
            finally:
                for _doc, fut in pending:
                    fut.cancel()
