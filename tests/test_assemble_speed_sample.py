"""The diversity summary's lexical measures run on a bounded, deterministic sample per node
(``[output] diversity_sample``): the documents with the smallest id hash, the same on every
run, and the card and report say it is a sample and how large."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pydantic
import pytest

from builder.config import CorpusConfig
from builder.quality.hooks import quality_summary
from builder.quality.metrics import (
    LEXICAL_SAMPLE,
    compression_ratio,
    distinct_n,
    id_key,
    node_diversity,
)
from builder.quality.summary import QualitySummary
from builder.run.paths import RunDir
from builder.settings.output import OutputSettings
from builder.stages.base import RunContext
from tests.test_quality_streaming import _run_dir, assert_same_nodes, corpus


def _ctx(tmp_path: Path, frame: pl.DataFrame, x: np.ndarray, sample: int) -> tuple:
    ctx, clean = _run_dir(tmp_path, frame, x)
    config = CorpusConfig(output=OutputSettings(diversity_sample=sample))
    return RunContext(config=config, paths=RunDir(ctx.paths.root)), clean


def test_lexical_measures_use_the_configured_sample_of_smallest_id_hashes(
    tmp_path: Path,
) -> None:
    frame, x = corpus(900)
    ctx, clean = _ctx(tmp_path, frame, x, sample=30)
    result = quality_summary(ctx, clean)
    assert result is not None
    # the same as the in-memory measure with that sample, and every document still counted
    assert_same_nodes(result.nodes, node_diversity(frame, x, sample=30))
    assert result.corpus["docs"] == 900
    # independently: the 30 documents of "math/algebra" with the smallest id keys, in
    # corpus order, are the texts measured
    node = frame.with_row_index("_row").filter(pl.col("taxonomy_path").str.starts_with("math/alg"))
    assert node.height > 30
    keys = [id_key(i) for i in node["id"].to_list()]
    picked = sorted(np.argsort(keys, kind="stable")[:30].tolist())
    texts = [node["text"][i] for i in picked]
    row = result.nodes.filter(pl.col("node") == "math/algebra").row(0, named=True)
    assert row["docs"] == node.height
    assert row["compression_ratio"] == compression_ratio(texts)
    assert row["distinct_2"] == distinct_n(texts, 2)
    # a larger sample measures other texts: the setting is what decides
    wide = node_diversity(frame, x, sample=1000)
    assert wide.filter(pl.col("node") == "math/algebra")["distinct_1"].item() != row["distinct_1"]


def test_the_card_and_report_data_say_the_lexical_measures_are_a_sample(tmp_path: Path) -> None:
    frame, x = corpus(300)
    ctx, clean = _ctx(tmp_path, frame, x, sample=25)
    quality_summary(ctx, clean)
    back = QualitySummary.read(ctx.paths.work / "diversity")  # what the card and report read
    assert back.summary["sample"] == 25
    assert "at most 25 documents per node" in back.summary["lexical_measures"]
    assert "[output] diversity_sample" in back.summary["lexical_measures"]
    assert "on a sample of at most 25 documents per node" in back.to_markdown()


def test_the_sample_setting_defaults_to_the_metrics_default_and_is_validated() -> None:
    assert OutputSettings().diversity_sample == LEXICAL_SAMPLE
    assert CorpusConfig().output.diversity_sample == LEXICAL_SAMPLE
    with pytest.raises(pydantic.ValidationError):
        OutputSettings(diversity_sample=1)
