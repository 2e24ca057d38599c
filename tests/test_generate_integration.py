"""Generation with the real embedded model (SmolLM2-135M through llama.cpp's server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.filters import filter_documents
from builder.generate import generate, read_generated
from builder.records import DOCUMENT_COLUMNS
from builder.settings.filters import FilterSettings, VerifySettings
from builder.settings.generate import GenerateSettings
from builder.settings.llm import LLMSettings
from builder.templates import load_templates, sample_units

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration]


def test_embedded_model_generates_documents_with_provenance(tmp_path: Path) -> None:
    from builder.llm import open_engine

    tset = load_templates(ROOT / "templates")
    out = tmp_path / "generated.jsonl"
    settings = GenerateSettings(
        templates=["section", "exercise_conceptual"],
        documents_per_unit=2,
        max_tokens=48,  # a few seconds of generation on 2 cores
        evolve=False,
    )
    unit = sample_units()[0]
    with open_engine(LLMSettings(), cache_dir=tmp_path / "cache", progress=False) as llm:
        stats = generate([unit], tset, llm, settings, out)
        assert stats.received == 2
        rows = list(read_generated(out).values())
        assert {r["template"] for r in rows} == {"section", "exercise_conceptual"}
        for row in rows:
            assert row["status"] in ("ok", "length", "invalid"), row["error"]
            assert set(DOCUMENT_COLUMNS) <= set(row)
            assert row["model"] == llm.model_name and row["request_sha256"]
            assert row["completion_tokens"] > 0 and row["taxonomy_path"] == unit.taxonomy_path
            if row["status"] == "ok":
                assert row["text"].strip()
        kept, rejected = filter_documents(rows, FilterSettings(min_tokens=10), VerifySettings())
        assert len(kept) + len(rejected) == 2
        assert all(r["stage"] and r["reason"] for r in rejected)
        # A rerun finds both rows finished (same prompt, same model) and sends nothing.
        again = generate([unit], tset, llm, settings, out)
        assert again.sent == 0
