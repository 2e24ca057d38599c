"""builder.card: the Hugging Face dataset card README.md of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.assemble import assemble, read_manifest
from builder.card import TERMS_WARNING, render_card, size_category, to_yaml, write_card
from tests.support.assemble_data import STATS, make_config, make_rejected, make_rows, taxonomy


def header_and_body(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    _, head, body = text.split("---\n", 2)
    return yaml.safe_load(head), body


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    run = tmp_path_factory.mktemp("card") / "run"
    cfg = make_config({"output.shard_max_rows": 100, "decontam.benchmarks": ["gsm8k-test"]})
    rows = make_rows(250, seed=5)
    assemble(rows, make_rejected(rows, 30), run, config=cfg, extra_manifest={"stats": STATS})
    return run, cfg


def test_yaml_header_has_the_hub_keys(run) -> None:
    run_dir, cfg = run
    path = write_card(run_dir, config=cfg, manifest=read_manifest(run_dir), stats=STATS)
    assert path == run_dir / "README.md"
    head, _ = header_and_body(path.read_text(encoding="utf-8"))
    assert head["license"] == "other" and head["license_name"]
    assert head["language"] == ["en"]
    assert head["size_categories"] == ["n<1K"]
    assert head["task_categories"] == ["text-generation"]
    assert set(head["tags"]) >= {"synthetic", "textbook", "curriculum"}
    assert head["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": "documents/*.parquet"}],
        }
    ]


def test_body_reports_models_counts_settings_and_limitations(run) -> None:
    run_dir, cfg = run
    manifest = read_manifest(run_dir)
    text = render_card(config=cfg, manifest=manifest, stats=STATS, taxonomy=taxonomy())
    _, body = header_and_body(text)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in body
    assert TERMS_WARNING in body
    assert "compete" in TERMS_WARNING
    for disc, v in manifest["counts"]["by_discipline"].items():
        name = taxonomy()[disc].name
        assert f"| {disc} | {name} | {v['documents']:,} | {v['tokens']:,} |" in body
    assert f"**{manifest['counts']['tokens']:,} tokens**" in body
    assert "| threshold | 0.8 |" in body  # dedup settings
    assert "| exact_duplicates | 9 |" in body  # dedup results from stats
    assert "gsm8k-test" in body  # decontam settings
    assert "| decontam | ngram_overlap |" in body  # rejected by stage and reason
    assert "Model collapse" in body and "Unverified facts" in body
    assert "Demo model quality" in body  # the embedded model wrote it
    assert 'load_dataset("parquet"' in body and "pl.read_parquet" in body
    assert manifest["config_hash"] in body
    assert "| generate | 35 | 400 | 120 | 0 |" in body  # cost and time per stage


def test_card_from_run_directory_alone(run) -> None:
    # `corpus report` regenerates the card with nothing but the run directory.
    run_dir, _ = run
    path = write_card(run_dir)
    head, body = header_and_body(path.read_text(encoding="utf-8"))
    assert head["configs"][0]["data_files"][0]["path"] == "documents/*.parquet"
    assert "| generate |" in body  # stats came from manifest["stats"]


def test_hub_loads_the_run_through_the_card(run, tmp_path: Path, monkeypatch) -> None:
    """``load_dataset(<run dir>)`` reads the card's ``configs`` and finds the shards."""
    run_dir, cfg = run
    write_card(run_dir, config=cfg)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    ds = datasets.load_dataset(str(run_dir), cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["train"]
    assert ds["train"].num_rows == read_manifest(run_dir)["counts"]["documents"]


def test_license_and_external_model(tmp_path: Path) -> None:
    cfg = make_config(
        {
            "output.license": "cc-by-4.0",
            "llm.base_url": "http://127.0.0.1:9/v1",
            "llm.model": "gpt-4o-mini",
            "decontam.enabled": False,
        }
    )
    rows = [dict(r, model="gpt-4o-mini") for r in make_rows(20)]
    res = assemble(rows, None, tmp_path, config=cfg)
    head, body = header_and_body(render_card(config=cfg, manifest=res.manifest))
    assert head["license"] == "cc-by-4.0" and "license_name" not in head
    assert "| gpt-4o-mini |" in body
    assert "Demo model quality" not in body
    assert "Decontamination was disabled" in body


@pytest.mark.parametrize(
    ("n", "bucket"),
    [
        (0, "n<1K"),
        (999, "n<1K"),
        (1000, "1K<n<10K"),
        (99_999, "10K<n<100K"),
        (2_500_000, "1M<n<10M"),
        (10**13, "n>1T"),
    ],
)
def test_size_category(n: int, bucket: str) -> None:
    assert size_category(n) == bucket


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.text(max_size=30),
    st.sampled_from(["yes", "no", "on", "null", "~", "1K<n<10K", "a: b", "- x", "#c", "'q'"]),
)
keys = st.text(min_size=1, max_size=12)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
def test_yaml_round_trips_through_pyyaml(data: dict) -> None:
    # The Hub parses card headers with a YAML 1.1 reader: nothing may change meaning.
    assert (yaml.safe_load(to_yaml(data)) or {}) == data


def test_pipeline_stats_shape(run) -> None:
    """The shape builder.pipeline passes: stage_seconds, generate counters, filter results,
    results that embed their settings (not repeated: the config's settings are shown)."""
    run_dir, cfg = run
    stats = {
        "cost_usd": 0.0125,
        "generate": {"planned": 40, "sent": 30, "cached": 10, "by_status": {"ok": 38, "length": 2}},
        "stage_seconds": {"syllabi": 0.5, "generate": 12.25, "assemble": 0.75},
        "units": 20,
        "filter": {"kept": 30, "rejected": 10},
        "dedup": {"kept": 28, "removed": 2, "settings": {"threshold": 0.8}},
    }
    _, body = header_and_body(render_card(config=cfg, manifest=read_manifest(run_dir), stats=stats))
    assert "Total cost: $0.0125" in body
    assert "| generate | 12.25 |" in body and body.index("| syllabi |") < body.index("| assemble |")
    assert "| by_status | ok: 38; length: 2 |" in body
    assert "| units | 20 |" in body
    assert "| kept | 30 |" in body and "| removed | 2 |" in body
    assert "| settings |" not in body
