"""Structured output: schemas from pydantic models, and checking what the model returned.

A request asks for structured output with ``ChatRequest.schema`` (a JSON schema, usually
``schema_for(MyModel)``). The engine sends it in each backend's form (``endpoint.
response_format``), parses the reply and validates it against the same schema with
``jsonschema`` (the schema that was sent is the contract, whatever produced it). Invalid or
truncated output gets one repair retry (``repair_messages``); the caller turns a valid
``result.parsed`` into its model with ``parse_as(result, MyModel)`` (pydantic validation).
"""

from __future__ import annotations

import copy
import json
import re
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import BaseModel

from builder.reasoning import answer_of
from builder.records import ChatResult, canonical_json

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def schema_for(model: type[BaseModel], *, strict: bool = True) -> dict[str, Any]:
    """The JSON schema of a pydantic model, made acceptable to OpenAI's ``strict`` mode.

    Strict mode wants every object to list all properties as required and to forbid extra
    ones; pydantic leaves fields with defaults optional. ``strict=False`` returns pydantic's
    schema unchanged.
    """
    schema = model.model_json_schema()
    return strict_schema(schema) if strict else schema


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where every object requires all its properties and no others."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                props = node.setdefault("properties", {})
                node["required"] = list(props)
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def extract_json(text: str) -> Any:
    """Parse a reply as JSON, tolerating a Markdown code fence around it.

    Raises ``ValueError`` with a short reason when the text is not JSON.
    """
    candidate = text.strip()
    m = _FENCE.match(candidate)
    if m:
        candidate = m.group(1)
    try:
        # strict=False accepts raw newlines and tabs inside strings: small models (and
        # llama.cpp's JSON grammar) emit them, and the content is what we want.
        return json.loads(candidate, strict=False)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


def validate(value: Any, schema: dict[str, Any]) -> str | None:
    """None when ``value`` satisfies ``schema``, else a one-line reason naming the path."""
    validator = _validator(canonical_json(schema))
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    err = errors[0]
    where = "/".join(str(p) for p in err.absolute_path) or "(root)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"does not match the schema at {where}: {err.message[:300]}{more}"


def check_output(text: str | None, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """(parsed value, None) when ``text`` is valid JSON for ``schema``, else (None, reason).
    A reasoning trace before the answer (``<think>…</think>``) is not part of the output."""
    text = answer_of(text)
    if text is None:
        return None, "no content in the reply"
    try:
        value = extract_json(text)
    except ValueError as exc:
        return None, str(exc)
    reason = validate(value, schema)
    return (value, None) if reason is None else (None, reason)


def repair_messages(
    messages: list[dict[str, Any]], bad_output: str | None, reason: str, truncated: bool
) -> list[dict[str, Any]]:
    """The conversation for the one repair retry: the bad reply, then what was wrong."""
    if truncated:
        ask = (
            "Your reply was cut off before the JSON was complete. Reply again with only the "
            "JSON object, shorter, so that it is complete and matches the schema."
        )
    else:
        ask = (
            f"Your reply was not valid: {reason}. Reply again with only the corrected JSON "
            "object, matching the schema exactly, and nothing else."
        )
    return [
        *messages,
        {"role": "assistant", "content": bad_output or ""},
        {"role": "user", "content": ask},
    ]


def parse_as(result: ChatResult, model: type[M]) -> M:
    """Validate a structured result into ``model`` (pydantic); raises if it is not ``ok``."""
    if not result.ok:
        raise ValueError(f"request {result.request_id} has no valid output: {result.error}")
    return model.model_validate(result.parsed)
