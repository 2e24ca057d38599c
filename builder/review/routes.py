"""The review app's request handlers: parse and validate the request, call the library, render.

Reads go through ``builder.review.queries.RunData`` (lazy Polars scans of the run) and the
taxonomy loader; writes through ``builder.review.proposals`` (the CLI's editors) and
``builder.review.flags``. Every POST handler starts with ``checked_form`` (read-only and CSRF
checks). A ``BuilderError`` from the library (an edit the validator refuses, an unknown id)
becomes an error page listing its problems, status 400, with nothing written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from builder.errors import BuilderError
from builder.review import flags as flag_store
from builder.review import proposals
from builder.review.queries import FACETS, STATUSES, VERIFIED, DocFilter, RunData
from builder.review.web import ReviewSettings, checked_form, page_context


def _settings(request: Request) -> ReviewSettings:
    return request.app.state.settings


def _run(request: Request) -> RunData:
    return request.app.state.run


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    return request.app.state.templates.TemplateResponse(
        request, name, {**page_context(request), **context}, status_code=status
    )


def _problems(request: Request, exc: BuilderError, title: str = "Refused") -> Response:
    return _render(
        request,
        "error.html",
        {"title": title, "problems": [str(p) for p in exc.problems]},
        status=400,
    )


def _taxonomy(request: Request) -> Any:
    """The taxonomy as its files are now, reloaded only when a file changed."""
    from builder.taxonomy import load_taxonomy
    from builder.taxonomy.validate import discover_files

    root = _settings(request).taxonomy_dir
    stamp = []
    for path in discover_files(root):
        st = os.stat(path)
        stamp.append((str(path), st.st_mtime_ns, st.st_size))
    cache = request.app.state.taxonomy_cache
    if cache.get("stamp") != stamp:
        cache["tax"] = load_taxonomy(root, levels=_levels(request))
        cache["stamp"] = stamp
    return cache["tax"]


def _syllabus_settings(request: Request) -> Any:
    config = _settings(request).config
    return config.syllabus if config is not None else None


def _levels(request: Request) -> Any:
    config = _settings(request).config
    return list(config.taxonomy.levels) if config is not None else None


def _done(request: Request, title: str, messages: list[str], back: str) -> Response:
    return _render(request, "result.html", {"title": title, "messages": messages, "back": back})


# -- pages -----------------------------------------------------------------------------------


async def home(request: Request) -> Response:
    return RedirectResponse("/taxonomy", status_code=303)


async def taxonomy_page(request: Request) -> Response:
    """The taxonomy tree with per-node statistics of the run; ``q`` searches names and ids."""
    try:
        tax = _taxonomy(request)
    except BuilderError as exc:
        return _problems(request, exc, "The taxonomy cannot be loaded")
    run = _run(request)
    q = request.query_params.get("q", "").strip()
    shown: set[str] | None = None
    matches: list[str] = []
    if q:
        needle = q.lower()
        matches = [n.id for n in tax if needle in n.id.lower() or needle in n.name.lower()]
        shown = set()
        for i in matches:
            shown.update(a.id for a in tax.path(i))
    return _render(
        request,
        "taxonomy.html",
        {
            "title": "Taxonomy",
            "tax": tax,
            "stats": run.node_stats(),
            "scores": run.score_columns(),
            "totals": run.totals(),
            "q": q,
            "shown": shown,
            "matches": matches,
        },
    )


async def proposals_page(request: Request) -> Response:
    """Proposed nodes and syllabi with their context, and the forms to decide on them."""
    try:
        tax = _taxonomy(request)
    except BuilderError as exc:
        return _problems(request, exc, "The taxonomy cannot be loaded")
    return _render(
        request,
        "proposals.html",
        {
            "title": "Proposals",
            "nodes": proposals.node_proposals(tax),
            "syllabi": proposals.syllabus_proposals(tax, _syllabus_settings(request)),
            "editable": proposals.EDITABLE_FIELDS,
        },
    )


def _float(params: Any, name: str) -> float | None:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a number, not {raw!r}") from None


def _int(params: Any, name: str) -> int:
    raw = (params.get(name) or "0").strip()
    if not raw.isdigit():
        raise HTTPException(400, f"{name} must be a whole number, not {raw!r}")
    return int(raw)


def parse_filter(request: Request, params: Any) -> DocFilter:
    """A ``DocFilter`` from query or form values; 400 for a value that cannot be right."""
    node = (params.get("node") or "").strip()
    path = ""
    if node:
        tax = _taxonomy(request)
        if node not in tax:
            raise HTTPException(400, f"unknown node {node!r}")
        path = tax.path_ids(node)
    status = params.get("status") or "all"
    if status not in STATUSES:
        raise HTTPException(400, f"status must be one of {', '.join(STATUSES)}")
    verified = params.get("verified") or ""
    if verified and verified not in VERIFIED:
        raise HTTPException(400, f"verified must be one of {', '.join(VERIFIED)}")
    score = params.get("score") or ""
    if score and score not in _run(request).score_columns():
        raise HTTPException(400, f"unknown score column {score!r}")
    values = {name: (params.get(name) or "").strip()[:200] for name in FACETS}
    return DocFilter(
        node=node,
        path=path,
        verified=verified,
        status=status,
        reason=(params.get("reason") or "").strip()[:200],
        score=score,
        min_score=_float(params, "min_score"),
        max_score=_float(params, "max_score"),
        **values,
    )


async def documents_page(request: Request) -> Response:
    """Kept and rejected documents matching the filter, side by side, one page each."""
    params = request.query_params
    filt = parse_filter(request, params)
    run = _run(request)
    size = _settings(request).page_size
    sides = []
    for which in ("kept", "rejected"):
        if filt.status not in ("all", which):
            continue
        offset = _int(params, f"{which}_offset")
        page = run.page(filt, which, offset, size)
        pages = {}
        if offset > 0:
            pages["previous"] = filt.query(**{f"{which}_offset": max(0, offset - size)})
        if offset + size < page.total:
            pages["next"] = filt.query(**{f"{which}_offset": offset + size})
        sides.append(
            {"which": which, "page": page, "links": {k: urlencode(v) for k, v in pages.items()}}
        )
    return _render(
        request,
        "documents.html",
        {
            "title": "Documents",
            "filter": filt,
            "filter_query": urlencode(filt.query()),
            "sides": sides,
            "facets": run.facet_values(),
            "facet_names": FACETS,
            "scores": run.score_columns(),
            "statuses": STATUSES,
            "verified_values": VERIFIED,
            "flags": flag_store.load_flags(run.run_dir),
        },
    )


async def document_page(request: Request) -> Response:
    """One document: full text, provenance (the messages sent), verification, flag."""
    from builder.review.provenance import find_provenance

    doc_id = request.path_params["doc_id"]
    if not flag_store.valid_document_id(doc_id):
        raise HTTPException(404, "no such document")
    run = _run(request)
    found = run.document(doc_id)
    if found is None:
        raise HTTPException(404, f"document {doc_id} is not in this run")
    which, row = found
    settings = _settings(request)
    prov = find_provenance(row, settings.run_dir, settings.cache_dir, settings.config)
    shown = ("text", "structured", "also_rejected")
    return _render(
        request,
        "document.html",
        {
            "title": f"Document {doc_id}",
            "which": which,
            "doc": row,
            "fields": {k: v for k, v in row.items() if k not in shown},
            "provenance": prov,
            "flag": flag_store.load_flags(run.run_dir).get(doc_id),
        },
    )


#: Flags listed on the Flags page (newest first); "unflag all" covers the rest.
FLAGS_SHOWN = 1000


async def flags_page(request: Request) -> Response:
    run = _run(request)
    current = sorted(flag_store.load_flags(run.run_dir).values(), key=lambda f: (f.at, f.id))
    shown = current[::-1][:FLAGS_SHOWN]
    return _render(request, "flags.html", {"title": "Flags", "flags": shown, "total": len(current)})


async def flag_confirm_page(request: Request) -> Response:
    """The flag confirmation: states how many documents match before anything is written."""
    params = request.query_params
    filt = parse_filter(request, params)
    ids = _run(request).matching_ids(filt)
    return _render(
        request,
        "confirm.html",
        {
            "title": "Confirm flags",
            "filter": filt,
            "filter_items": filt.query(),
            "count": len(ids),
            "note": (params.get("note") or "").strip(),
        },
    )


# -- writes ----------------------------------------------------------------------------------


def _ids(form: Any, name: str = "ids") -> list[str]:
    ids = [str(v).strip() for v in form.getlist(name) if str(v).strip()]
    if not ids:
        raise HTTPException(400, "nothing selected: tick at least one box")
    return ids


async def _decide(
    request: Request,
    what: str,
    approve: Callable[[Any, list[str]], list[str]],
    reject: Callable[[Any, list[str]], list[str]],
) -> Response:
    """Apply the form's ``action`` (approve or reject) to the selected ids, then report."""
    form = await checked_form(request)
    action = form.get("action")
    ids = _ids(form)
    try:
        tax = _taxonomy(request)
        if action == "approve":
            messages = approve(tax, ids)
        elif action == "reject":
            messages = reject(tax, ids)
        else:
            raise HTTPException(400, "action must be approve or reject")
    except BuilderError as exc:
        return _problems(request, exc)
    return _done(request, f"{what}: {action}", messages, "/proposals")


async def decide_nodes(request: Request) -> Response:
    """Approve or reject the selected proposed nodes (``corpus taxonomy approve|reject``)."""
    return await _decide(request, "Nodes", proposals.approve_nodes, proposals.reject_nodes)


async def edit_node_route(request: Request) -> Response:
    """Edit a proposed node's name, description, level or weight through the editor."""
    form = await checked_form(request)
    node_id = request.path_params["node_id"]
    values = {k: str(form[k]) for k in proposals.EDITABLE_FIELDS if k in form}
    try:
        tax = _taxonomy(request)
        if node_id not in tax:
            raise HTTPException(404, f"unknown node {node_id!r}")
        messages = proposals.edit_node(tax, node_id, values, _levels(request))
    except BuilderError as exc:
        return _problems(request, exc)
    return _done(request, f"Edited {node_id}", messages or ["nothing changed"], "/proposals")


async def decide_syllabi(request: Request) -> Response:
    """Approve (``corpus syllabus approve``) or reject (move aside) the selected syllabi."""
    return await _decide(
        request,
        "Syllabi",
        lambda tax, ids: proposals.approve_syllabi(tax, ids, _syllabus_settings(request)),
        proposals.reject_syllabi,
    )


async def edit_session_route(request: Request) -> Response:
    """Edit one session (title, goals, concepts) of a proposed syllabus."""
    from builder.syllabus.write import SESSION_FIELDS

    form = await checked_form(request)
    subject_id = request.path_params["subject_id"]
    number = request.path_params["number"]
    values = {k: str(form[k]) for k in SESSION_FIELDS if k in form}
    try:
        tax = _taxonomy(request)
        if subject_id not in tax:
            raise HTTPException(404, f"unknown subject {subject_id!r}")
        messages = proposals.edit_syllabus_session(
            tax, subject_id, number, values, _syllabus_settings(request)
        )
    except BuilderError as exc:
        return _problems(request, exc)
    title = f"Edited the syllabus of {subject_id}"
    return _done(request, title, messages or ["nothing changed"], "/proposals")


async def flag_route(request: Request) -> Response:
    """Flag one document (``id``) or every corpus document matching a filter.

    A filter flag carries ``expected``, the count the confirmation page stated; when the
    filter now matches another number (the run was rebuilt meanwhile) nothing is written and
    the curator is asked again.
    """
    form = await checked_form(request)
    run = _run(request)
    # The curator's reason is the form's ``note``: ``reason`` filters by rejection reason.
    reason = str(form.get("note") or "").strip()
    if not reason:
        raise HTTPException(400, "give a reason: it goes to rejected.parquet with the document")
    if form.get("mode") == "filter":
        filt = parse_filter(request, form)
        ids = run.matching_ids(filt)
        expected = _int(form, "expected")
        if len(ids) != expected:
            back = "/flags/confirm?" + urlencode({**filt.query(), "note": reason})
            raise HTTPException(
                409,
                f"the filter now matches {len(ids)} documents, not {expected}: "
                f"confirm again at {back}",
            )
        back = "/documents?" + urlencode(filt.query())
    else:
        doc_id = str(form.get("id") or "")
        if not flag_store.valid_document_id(doc_id):
            raise HTTPException(400, "not a document id")
        found = run.document(doc_id)
        if found is None or found[0] != "kept":
            raise HTTPException(
                400, f"{doc_id} is not in the corpus (only kept documents are flagged)"
            )
        ids, back = [doc_id], f"/documents/{doc_id}"
    n = flag_store.append_flags(run.run_dir, ids, "flag", reason)
    return _done(
        request,
        "Flagged",
        [f"flagged {n} document(s): {reason}", "the next `corpus build` drops them at assembly"],
        back,
    )


async def unflag_route(request: Request) -> Response:
    """Unflag the ticked documents, or every flag with ``all`` (stated count ``expected``)."""
    form = await checked_form(request)
    run = _run(request)
    current = flag_store.load_flags(run.run_dir)
    if form.get("all"):
        if _int(form, "expected") != len(current):
            raise HTTPException(409, f"there are now {len(current)} flags: reload the page")
        ids = list(current)
    else:
        ids = _ids(form)
    for i in ids:
        if not flag_store.valid_document_id(i):
            raise HTTPException(400, "not a document id")
    n = flag_store.append_flags(run.run_dir, [i for i in ids if i in current], "unflag")
    return _done(request, "Unflagged", [f"unflagged {n} document(s)"], "/flags")
