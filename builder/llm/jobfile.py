"""``corpus llm run``: the engine on a file of requests in the OpenAI Batch format.

Input, one JSON object per line (OpenAI Batch input)::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "...", "messages": [...], "temperature": 0.2, "max_tokens": 200}}

Output, one line per request (OpenAI Batch output)::

    {"id": "batch_req_...", "custom_id": "q1",
     "response": {"status_code": 200, "request_id": "<cache key>", "body": {...}},
     "error": null}

``body.model`` is not used: requests go to the configured endpoints (so one file runs
against any of them); ``response_format`` with a JSON schema becomes structured output
(validated, with one repair retry; an answer that stays invalid gets ``error.code =
"invalid_output"`` next to the response). A request that kept failing is written with
``response: null`` and ``error.code = "request_failed"``.

Resume: results are appended as they complete (flushed and fsynced at least every second).
On a rerun, the output is read first: a torn last line (kill -9 mid-write) is cut off, and
custom_ids already written are skipped, so each custom_id appears exactly once. With
``retry_failed``, ``request_failed`` lines are removed (atomically) and run again.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import InputError, Problem, ValidationError
from builder.records import ChatRequest, ChatResult

CHAT_URL = "/v1/chat/completions"
_MAX_PROBLEMS = 20
FAILED_CODE = "request_failed"


@dataclass
class JobfileSummary:
    """What ``run_jobfile`` did."""

    total: int = 0  # requests in the input
    already_done: int = 0  # found in the output from an earlier run
    written: int = 0  # lines written now
    ok: int = 0
    length: int = 0
    invalid: int = 0
    failed: int = 0
    cached: int = 0
    cost: float = 0.0


def to_request(custom_id: str, body: dict[str, Any]) -> ChatRequest:
    """A Batch-format body as a ``ChatRequest`` (raises ``ValueError`` when unusable)."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("body.messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError("each message needs a role and content")
    params = {k: v for k, v in body.items() if k not in ("messages", "model", "stream")}
    if params.get("n", 1) != 1:
        raise ValueError("n > 1 is not supported: write one line per sample")
    schema = None
    rf = params.get("response_format")
    if isinstance(rf, dict):
        if rf.get("type") == "json_schema":
            js = rf.get("json_schema") or {}
            schema = js.get("schema")
            if not isinstance(schema, dict):
                raise ValueError("response_format.json_schema.schema must be an object")
            del params["response_format"]
        elif rf.get("type") == "json_object" and isinstance(rf.get("schema"), dict):
            schema = rf["schema"]
            del params["response_format"]
    return ChatRequest(
        id=custom_id, messages=tuple(messages), params=params, schema=schema, sample_index=0
    )


def _parse_line(line: str, path: Path, lineno: int) -> tuple[str, dict[str, Any]]:
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(item, dict):
        raise ValueError("each line must be a JSON object")
    cid = item.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise ValueError("custom_id must be a non-empty string")
    if item.get("method", "POST") != "POST":
        raise ValueError("method must be POST")
    if item.get("url", CHAT_URL) not in (CHAT_URL, "/chat/completions"):
        raise ValueError(f"url must be {CHAT_URL}")
    to_request(cid, item.get("body"))  # validates the body
    return cid, item["body"]


def validate_input(path: Path) -> int:
    """Check every line (and that custom_ids are unique); returns the request count."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    cid, _ = _parse_line(line, path, lineno)
                except ValueError as exc:
                    problems.append(Problem(str(exc), path, lineno))
                else:
                    if cid in seen:
                        problems.append(
                            Problem(
                                f"custom_id {cid!r} repeats line {seen[cid]}",
                                path,
                                lineno,
                                "custom_ids must be unique",
                            )
                        )
                    seen[cid] = lineno
                    n += 1
                if len(problems) >= _MAX_PROBLEMS:
                    break
    except UnicodeDecodeError:
        raise InputError("requests file is not UTF-8 text", file=path) from None
    except OSError as exc:
        raise InputError(f"cannot read the requests file: {exc.strerror}", file=path) from None
    if problems:
        raise ValidationError(problems, summary=f"{len(problems)} bad line(s) in {path}")
    return n


def read_done(output: Path, *, drop_failed: bool = False) -> set[str]:
    """custom_ids already in ``output``; cuts a torn last line; optionally removes (and
    forgets) ``request_failed`` lines so they run again."""
    if not output.exists():
        return set()
    done: set[str] = set()
    keep_end = 0
    failed_lines = 0
    with open(output, "rb") as f:
        data = f.read()
    pos = 0
    lines: list[tuple[int, int, bytes]] = []
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: torn last line
        lines.append((pos, nl + 1, data[pos:nl]))
        pos = nl + 1
    kept: list[bytes] = []
    for i, (_start, end, raw) in enumerate(lines):
        if not raw.strip():
            keep_end = end
            continue
        try:
            item = json.loads(raw)
            cid = item["custom_id"]
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:
                break  # a torn line that happens to end in a newline
            raise InputError(
                "the output file has a line that is not a result",
                file=output,
                line=i + 1,
                hint="move the file away (or fix that line) and rerun",
            ) from None
        keep_end = end
        err = item.get("error") or {}
        if drop_failed and isinstance(err, dict) and err.get("code") == FAILED_CODE:
            failed_lines += 1
            continue
        done.add(cid)
        kept.append(raw)
    if failed_lines:
        _atomic_write(output, b"".join(k + b"\n" for k in kept))
    elif keep_end < len(data):
        with open(output, "r+b") as f:
            f.truncate(keep_end)
            f.flush()
            os.fsync(f.fileno())
    return done


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def output_line(result: ChatResult, bodies: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One Batch-format output object for a result."""
    key = result.request_sha256 or ""
    line: dict[str, Any] = {
        "id": f"batch_req_{key[:24]}" if key else "batch_req_none",
        "custom_id": result.request_id,
        "response": None,
        "error": None,
    }
    if result.status == "failed" or not bodies:
        line["error"] = {"code": FAILED_CODE, "message": result.error or "no answer"}
        return line
    line["response"] = {"status_code": 200, "request_id": key, "body": bodies[-1]}
    if result.status == "invalid":
        line["error"] = {"code": "invalid_output", "message": result.error}
    return line


def _requests(path: Path, skip: set[str]) -> Iterator[ChatRequest]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            cid, body = _parse_line(line, path, lineno)
            if cid not in skip:
                yield to_request(cid, body)


def run_jobfile(
    engine: Any,
    requests_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    max_cost: float | None = None,
    retry_failed: bool = False,
) -> JobfileSummary:
    """Run every request of a Batch-format file not yet in ``output_path``, appending results.

    Raises what the engine raises (``BudgetExceeded`` after writing every finished result).
    """
    src = Path(requests_path)
    out = Path(output_path)
    summary = JobfileSummary(total=validate_input(src))
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(out, drop_failed=retry_failed)
    summary.already_done = len(done)
    last_sync = time.monotonic()
    with open(out, "a", encoding="utf-8") as f:
        try:
            for result, bodies in engine.run_with_responses(
                _requests(src, done), max_cost=max_cost
            ):
                f.write(json.dumps(output_line(result, bodies), ensure_ascii=False) + "\n")
                summary.written += 1
                setattr(summary, result.status, getattr(summary, result.status, 0) + 1)
                summary.cached += int(result.cached)
                summary.cost += 0.0 if result.cached else result.cost
                now = time.monotonic()
                if now - last_sync >= 1.0:
                    f.flush()
                    os.fsync(f.fileno())
                    last_sync = now
        finally:
            f.flush()
            os.fsync(f.fileno())
    return summary
