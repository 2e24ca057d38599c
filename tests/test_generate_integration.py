"""Generation with the real embedded model (SmolLM2-135M through llama.cpp's server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.filters import filter_documents
from builder.llm.endpoint import EMBEDDED_MODEL
from builder.records import DOCUMENT_COLUMNS
from builder.settings.filters import FilterSettings, VerifySettings
from tests.support.generation import run_generate, write_generate_project

pytestmark = [pytest.mark.integration]


def test_embedded_model_generates_documents_with_provenance(tmp_path: Path) -> None:
    # `corpus generate` with an empty [llm] section: the build's generate stage on the
    # embedded model, one unit, one document of each of two templates.
    config = write_generate_project(
        tmp_path / "project",
        None,
        {"limits": "Limits and continuity"},
        templates=["section", "exercise_conceptual"],
        documents_per_unit=2,
        generate={"max_tokens": 48},  # a few seconds of generation on 2 cores
    )
    gen = run_generate(config)
    assert gen.exit_code == 0, (gen.output, gen.error)
    assert gen.counters["received"] == 2
    rows = gen.rows
    assert {r["template"] for r in rows} == {"section", "exercise_conceptual"}
    for row in rows:
        assert row["status"] in ("ok", "length", "invalid"), row["error"]
        assert set(DOCUMENT_COLUMNS) <= set(row)
        assert row["model"] == EMBEDDED_MODEL and row["request_sha256"]
        assert row["completion_tokens"] > 0
        assert row["taxonomy_path"] == "mathematics/calculus/limits"
        if row["status"] == "ok":
            assert row["text"].strip()
    kept, rejected = filter_documents(rows, FilterSettings(min_tokens=10), VerifySettings())
    assert len(kept) + len(rejected) == 2
    assert all(r["stage"] and r["reason"] for r in rejected)
    # A rerun finds both rows finished (same prompt, same model) and sends nothing.
    again = run_generate(config)
    assert again.exit_code == 0, (again.output, again.error)
    assert again.counters["sent"] == 0 and again.counters["reused"] == 2
