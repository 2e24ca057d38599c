"""Educational-value judge: an LLM grades each kept document 0-5 (``[judge]``).

FineWeb-Edu annotated web pages with an additive 5-point rubric and kept those scoring >= 3
(MMLU 33% -> 37%); ``templates/judge/edu_value.j2`` adapts that rubric to textbook sections
and exercises (on topic, key concepts, correct and built from the basics, worked examples,
fit for the audience). The judge answers through structured output (``JUDGE_SCHEMA``:
``score`` 0-5 and a one-sentence ``rationale``) via the same engine as generation, so it is
cached, retried and counted against the build's budget, and ``corpus plan`` prices it.

Every document gets ``edu_score`` (null when judging failed), ``judge_rationale``,
``judge_model`` and ``judge_error`` (the failure, when there was one): failures are recorded
and counted, never dropped silently, and a document that could not be judged is kept.
``split_low_value`` drops scores below ``[filters] min_edu_score`` (reason ``low_value``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from builder.errors import TemplateError
from builder.records import ChatRequest, ChatResult
from builder.settings.quality import JudgeSettings

STAGE = "quality"
REASON = "low_value"
PURPOSE = "judge"
JUDGE_SCHEMA: dict[str, Any] = {
    "title": "edu_value",
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 5},
        "rationale": {"type": "string"},
    },
    "required": ["score", "rationale"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt: system text and a Jinja body rendering the user message."""

    path: Path
    system: str
    body: str
    version: int
    sha256: str

    def render(self, **context: Any) -> str:
        env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
        try:
            return env.from_string(self.body).render(**context).strip()
        except Exception as exc:  # noqa: BLE001 - every template error becomes one user error
            raise TemplateError(
                f"judge template cannot render: {exc}", file=self.path, hint="fix the template"
            ) from None


def load_judge_template(path: str | Path) -> JudgeTemplate:
    """Read a judge template: YAML front matter (``system``, ``version``) between ``---``
    lines, then the body. Errors name the file."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(
            f"judge template not readable: {exc.strerror or exc}",
            file=p,
            hint="set [judge] template to an existing file (see templates/judge/)",
        ) from None
    parts = raw.split("---\n", 2)
    if len(parts) != 3 or parts[0].strip():
        raise TemplateError(
            "judge template needs YAML front matter between two '---' lines", file=p, line=1
        )
    try:
        front = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError as exc:
        raise TemplateError(f"bad front matter: {exc}", file=p) from None
    if not isinstance(front, dict) or not isinstance(front.get("system", ""), str):
        raise TemplateError("front matter must be a mapping with a text 'system'", file=p)
    return JudgeTemplate(
        path=p,
        system=str(front.get("system") or "").strip(),
        body=parts[2],
        version=int(front.get("version") or 1),
        sha256=hashlib.sha256(raw.encode("utf-8")).hexdigest(),
    )


def _concepts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def judge_request(
    row: Mapping[str, Any], template: JudgeTemplate, settings: JudgeSettings
) -> ChatRequest:
    """The judge's request for one document row (id ``judge:<doc id>``)."""
    text = str(row.get("text") or "")[: settings.max_chars]
    user = template.render(
        kind=row.get("kind") or "section",
        subject=row.get("subject_name") or row.get("subject") or "",
        topic=row.get("topic_name") or row.get("topic") or "",
        session=row.get("session") or "",
        audience=row.get("audience") or "",
        concepts=_concepts(row.get("concepts")),
        text=text,
    )
    messages: list[dict[str, str]] = []
    if template.system:
        messages.append({"role": "system", "content": template.system})
    messages.append({"role": "user", "content": user})
    return ChatRequest(
        id=f"judge:{row.get('id')}",
        messages=tuple(messages),
        params={"temperature": settings.temperature, "max_tokens": settings.max_tokens, "seed": 0},
        schema=JUDGE_SCHEMA,
        metadata={
            "purpose": PURPOSE,
            "doc_id": row.get("id"),
            "discipline": row.get("discipline"),
            "template_sha256": template.sha256,
        },
    )


def parse_verdict(result: ChatResult) -> tuple[int | None, str | None, str | None]:
    """(score, rationale, error) of one judge result; exactly one of score/error is set."""
    if result.status != "ok":
        return None, None, f"{result.status}: {result.error or result.finish_reason or 'no answer'}"
    parsed = result.parsed
    if not isinstance(parsed, dict):
        return None, None, "judge reply is not a JSON object"
    score = parsed.get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 5:
        return None, None, f"judge score {score!r} is not an integer from 0 to 5"
    rationale = parsed.get("rationale")
    return score, (str(rationale).strip() if rationale is not None else None), None


@dataclass
class JudgeStats:
    """Counts of one judging pass (shown in the card and the report)."""

    documents: int = 0
    judged: int = 0
    failed: int = 0
    cached: int = 0
    cost: float = 0.0
    scores: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "judged": self.judged,
            "failed": self.failed,
            "cached": self.cached,
            "cost_usd": round(self.cost, 6),
            "scores": {str(k): v for k, v in sorted(self.scores.items())},
            "errors": dict(self.errors),
        }


def judge_frame(
    frame: pl.DataFrame,
    llm: Any,
    template: JudgeTemplate,
    settings: JudgeSettings,
    *,
    units: Mapping[str, Any] | None = None,
    max_cost: float | None = None,
) -> tuple[pl.DataFrame, JudgeStats]:
    """``frame`` with ``edu_score``, ``judge_rationale``, ``judge_model``, ``judge_error``.

    ``llm`` is any ``builder.llm.base.LLM`` (the engine); ``units`` (unit_id -> Unit) adds
    topic and subject names to the prompt. Results come back in any order; they are matched
    by request id.
    """
    rows = frame.to_dicts()
    stats = JudgeStats(documents=len(rows))
    requests = []
    for row in rows:
        unit = (units or {}).get(row.get("unit_id"))
        if unit is not None:
            row = {**row, "topic_name": unit.topic_name, "subject_name": unit.subject_name}
        requests.append(judge_request(row, template, settings))
    by_id: dict[str, ChatResult] = {}
    for result in llm.run(requests, max_cost=max_cost):
        by_id[result.request_id] = result
    scores: list[int | None] = []
    rationales: list[str | None] = []
    errors: list[str | None] = []
    models: list[str | None] = []
    for req in requests:
        result = by_id.get(req.id) or ChatResult(req.id, "skipped", error="no result returned")
        score, rationale, error = parse_verdict(result)
        scores.append(score)
        rationales.append(rationale)
        errors.append(error)
        models.append(result.model or getattr(llm, "model_name", None))
        stats.cost += result.cost or 0.0
        stats.cached += bool(result.cached)
        if score is None:
            stats.failed += 1
            key = (error or "").split(":", 1)[0]
            stats.errors[key] = stats.errors.get(key, 0) + 1
        else:
            stats.judged += 1
            stats.scores[score] = stats.scores.get(score, 0) + 1
    out = frame.with_columns(
        pl.Series("edu_score", scores, dtype=pl.Int8),
        pl.Series("judge_rationale", rationales, dtype=pl.String),
        pl.Series("judge_model", models, dtype=pl.String),
        pl.Series("judge_error", errors, dtype=pl.String),
    )
    return out, stats


def split_low_value(
    frame: pl.DataFrame, min_edu_score: int | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept, rejected): judged documents scoring below ``min_edu_score`` are rejected with
    reason ``low_value``; unjudged ones (null score, error recorded) are kept."""
    if min_edu_score is None or "edu_score" not in frame.columns:
        return frame, frame.clear()
    low = pl.col("edu_score").is_not_null() & (pl.col("edu_score") < min_edu_score)
    rejected = frame.filter(low).with_columns(
        pl.lit(STAGE).alias("stage"),
        pl.lit(REASON).alias("reason"),
        pl.format(
            "edu_score {} < min_edu_score {}: {}",
            pl.col("edu_score"),
            pl.lit(min_edu_score),
            pl.col("judge_rationale").fill_null(""),
        ).alias("detail"),
    )
    return frame.filter(~low), rejected
