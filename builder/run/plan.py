"""``corpus plan``: requests, tokens and cost per discipline before anything is spent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from builder.config import CorpusConfig
from builder.records import ChatRequest, Unit
from builder.run.build import _engine
from builder.run.inputs import check_inputs, missing_syllabi, node_statuses, open_walk
from builder.run.paths import run_dir, with_run

if TYPE_CHECKING:  # pragma: no cover
    from builder.taxonomy import Taxonomy
    from builder.templates import TemplateSet


def _generated_rows(config: CorpusConfig) -> dict[str, dict[str, Any]]:
    """The run's generation rows by request id (to render exact follow-up requests)."""
    from builder.stages.generate import read_run_generated

    return read_run_generated(run_dir(config))


@dataclass
class PlanRow:
    """Requests, cache hits, tokens and cost of one discipline (or the total)."""

    discipline: str
    requests: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    max_output_tokens: int = 0
    cost: float | None = 0.0
    max_cost: float | None = 0.0

    def add(self, other: PlanRow) -> None:
        self.requests += other.requests
        self.cached += other.cached
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.max_output_tokens += other.max_output_tokens
        self.cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        self.max_cost = (
            None
            if self.max_cost is None or other.max_cost is None
            else self.max_cost + other.max_cost
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "discipline": self.discipline,
            "requests": self.requests,
            "cached": self.cached,
            "to_send": self.requests - self.cached,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "max_output_tokens": self.max_output_tokens,
            "cost_usd": None if self.cost is None else round(self.cost, 6),
            "max_cost_usd": None if self.max_cost is None else round(self.max_cost, 6),
        }


@dataclass
class PlanSummary:
    """``corpus plan``: requests, tokens and cost per discipline before anything is spent.

    ``rows`` has one entry per discipline (generation, evolution and second-sample requests
    of its documents) plus ``(syllabi)`` when syllabi are missing. ``estimated`` requests
    depend on outputs that do not exist yet (an exercise to evolve or to check): they are
    counted as an upper bound and can never be cache hits.
    """

    model: str
    units: int
    rows: list[PlanRow]
    syllabus_requests: int
    generation_requests: int
    transform_requests: int
    second_sample_requests: int
    estimated: int
    missing_syllabi: tuple[str, ...] = ()
    unpriced: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def total(self) -> PlanRow:
        t = PlanRow("TOTAL")
        for r in self.rows:
            t.add(r)
        return t

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "units": self.units,
            "per_discipline": [r.to_dict() for r in self.rows],
            "total": self.total.to_dict(),
            "syllabus_requests": self.syllabus_requests,
            "generation_requests": self.generation_requests,
            "transform_requests": self.transform_requests,
            "second_sample_requests": self.second_sample_requests,
            "estimated_requests": self.estimated,
            "missing_syllabi": list(self.missing_syllabi),
            "unpriced_models": list(self.unpriced),
            "warnings": list(self.warnings),
        }


def plan(
    config: CorpusConfig,
    *,
    run: str | None = None,
    cache_dir: str | None = None,
    llm: Any = None,
) -> PlanSummary:
    """Requests, tokens and cost per discipline of building ``config``, sending nothing.

    Counts exactly the syllabus requests of missing syllabi and the first wave of generation
    requests (their rendered prompts), with cache hits. Evolution and second-sample requests
    depend on generated exercises: where the run (``run``, default ``[output] run``) already
    holds them they are rendered exactly, otherwise they are estimated as an upper bound.
    ``llm`` must offer ``estimate(requests)`` and ``model_name`` (default: the configured
    engine, which starts no server for this).
    """
    from builder.generate import plan_requests

    config = with_run(config, run)
    warnings: list[str] = []
    tax, templates, _bench = check_inputs(config, strict=False, log=warnings.append)
    missing = missing_syllabi(tax, config)
    units = list(open_walk(tax, config))
    requests = plan_requests(units, templates, config.generate)
    # A dry run needs no API key: the cache and the prices do not depend on it.
    keyless = config.llm.model_copy(
        update={
            "api_key_env": None,
            "endpoints": [e.model_copy(update={"api_key_env": None}) for e in config.llm.endpoints],
        }
    )
    offline = config.model_copy(update={"llm": keyless})
    with _engine(offline, llm, cache_dir, False) as engine:
        later, estimated = _later_requests(config, units, templates, requests, engine.model_name)
        syllabus_reqs = _syllabus_requests(tax, config, missing)
        by_disc: dict[str, list[ChatRequest]] = {}
        for r in [*requests, *later]:
            by_disc.setdefault(str(r.metadata.get("discipline") or "?"), []).append(r)
        groups = [(d, by_disc[d]) for d in sorted(by_disc)]
        if syllabus_reqs:
            groups.append(("(syllabi)", syllabus_reqs))
        # The educational-value judge grades every kept document (an upper bound here).
        from builder.quality.hooks import estimate_judge, plan_judge

        judge_reqs = plan_judge(config, [*requests, *later])
        if judge_reqs:
            groups.append(("(judge)", judge_reqs))
        rows: list[PlanRow] = []
        unpriced: set[str] = set()
        for name, reqs in groups:
            if name == "(judge)":  # the judge may have its own endpoint and prices
                est = estimate_judge(config, reqs, engine, cache_dir)
            else:
                est = engine.estimate(reqs)
            unpriced.update(est.unpriced)
            rows.append(
                PlanRow(
                    name,
                    requests=est.requests,
                    cached=est.cached,
                    input_tokens=int(est.input_tokens),
                    output_tokens=int(est.output_tokens),
                    max_output_tokens=int(est.max_output_tokens),
                    cost=None if est.unpriced else float(est.cost),
                    max_cost=None if est.unpriced else float(est.max_cost),
                )
            )
        checks = sum(1 for r in later if r.metadata.get("purpose") == "second_sample")
        return PlanSummary(
            model=engine.model_name,
            units=len(units),
            rows=rows,
            syllabus_requests=len(syllabus_reqs),
            generation_requests=len(requests),
            transform_requests=len(later) - checks,
            second_sample_requests=checks,
            estimated=estimated,
            missing_syllabi=tuple(missing),
            unpriced=tuple(sorted(unpriced)),
            warnings=tuple(warnings),
        )


def _syllabus_requests(
    tax: Taxonomy, config: CorpusConfig, missing: list[str]
) -> list[ChatRequest]:
    from builder.syllabus import syllabus_request

    statuses = node_statuses(config)
    return [syllabus_request(tax, sid, config.syllabus, statuses=statuses) for sid in missing]


def _later_requests(
    config: CorpusConfig,
    units: list[Unit],
    templates: TemplateSet,
    first_wave: list[ChatRequest],
    model: str,
) -> tuple[list[ChatRequest], int]:
    """Evolution and second-sample requests of a plan, and how many of them are estimates.

    Exercises that the run already generated (same prompt) give their real follow-up
    requests (so cache hits count); the others give stand-ins of the same size: the parent's
    prompt plus its expected reply in, the follow-up template's ``max_tokens`` out.
    """
    from builder.generate import FINISHED_STATUSES, plan_transforms, prompt_sha256
    from builder.templates import structured_problem

    gen = config.generate
    verify = config.verify
    second = verify.enabled and verify.second_sample
    rows = _generated_rows(config)
    units_by_id = {u.unit_id: u for u in units}
    fraction = config.llm.expected_output_fraction
    transforms = [t for t in templates.transforms() if not gen.templates or t.name in gen.templates]

    def steps_of(t: Any) -> int:
        spec = t.front.transform_of
        return gen.evolution_steps if gen.evolution_steps is not None else spec.steps

    def applies(t: Any, exercise_type: str | None) -> bool:
        spec = t.front.transform_of
        return not spec.exercise_types or exercise_type in spec.exercise_types

    def stand_in(parent: ChatRequest, rid: str, max_tokens: int, metadata: dict) -> ChatRequest:
        reply = " x" * int((parent.params.get("max_tokens") or config.llm.max_tokens) * fraction)
        return ChatRequest(
            id=rid,
            messages=(*parent.messages, {"role": "user", "content": reply}),
            params={"max_tokens": max_tokens},
            metadata=metadata,
        )

    out: list[ChatRequest] = []
    estimated = 0
    wave = first_wave
    step = 1
    while wave:
        parents = []
        for r in wave:
            row = rows.get(r.id)
            if (
                row is not None
                and row.get("status") in FINISHED_STATUSES
                and row.get("prompt_sha256") == prompt_sha256(r, model)
            ):
                parents.append(row)
                ok = row.get("status") == "ok" and not structured_problem(
                    row.get("exercise_type"), row.get("structured")
                )
                if second and ok and row.get("exercise_type") == "quantitative":
                    from builder.verify.quant import second_sample_request

                    req = second_sample_request(row, verify)
                    out.append(
                        ChatRequest(
                            req.id,
                            req.messages,
                            req.params,
                            req.schema,
                            req.sample_index,
                            {**req.metadata, "discipline": row.get("discipline")},
                        )
                    )
                continue
            if r.metadata.get("kind") != "exercise":
                continue
            # Not generated yet: stand-ins for its second sample and its evolutions.
            disc = r.metadata.get("discipline")
            check = {"discipline": disc, "purpose": "second_sample"}
            evolve = {"discipline": disc, "purpose": "evolve"}
            etype = r.metadata.get("exercise_type")
            if second and etype == "quantitative":
                out.append(
                    stand_in(r, f"plan:{r.id}:second", verify.second_sample_max_tokens, check)
                )
                estimated += 1
            if not gen.evolve:
                continue
            done = int(r.metadata.get("evolution_step") or 0)
            for t in transforms:
                if not applies(t, etype) or (done and r.metadata.get("template") != t.name):
                    continue
                max_tokens = gen.max_tokens or t.front.params.max_tokens
                for k in range(done + 1, steps_of(t) + 1):
                    out.append(stand_in(r, f"plan:{r.id}:{t.name}:{k}", max_tokens, evolve))
                    estimated += 1
                    if second and etype == "quantitative":
                        rid = f"plan:{r.id}:{t.name}:{k}:second"
                        out.append(stand_in(r, rid, verify.second_sample_max_tokens, check))
                        estimated += 1
        wave = plan_transforms(parents, units_by_id, templates, gen, step) if gen.evolve else []
        out.extend(wave)
        step += 1
    return out, estimated
