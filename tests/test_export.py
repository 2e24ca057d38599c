"""``corpus export``: each format loads with ``datasets`` offline with the right roles and
fields, provenance is kept, node splits never share a node, reruns are byte-identical, and
user mistakes are one line with exit code 2. The run is a real ``corpus build`` against the
loopback fake server (exercises of every type, Evol-Instruct children, sections)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.cli import main
from builder.export import ExportOptions, export_run
from builder.export.split import assign_test
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import make_project, responder

if TYPE_CHECKING:
    import datasets


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-run")
    small = {
        "walk": {"subtree": ["arithmetic", "programming", "algorithms"], "limit": 5},
        "generate": {"documents_per_unit": 4, "evolve": True},
    }
    with pytest.MonkeyPatch.context() as mp, FakeOpenAIServer(responder=responder) as srv:
        mp.setenv("CORPUS_CACHE_DIR", str(root / "cache"))
        mp.setenv("CORPUS_OUTPUT_DIR", str(root / "outputs"))
        config = make_project(root / "p", srv.base_url, small)
        _cli("build", "--config", str(config), "--no-progress")
    return root / "outputs" / "test"


@pytest.fixture(scope="module")
def docs(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "documents" / "*.parquet")


def _cli(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _datasets() -> Any:
    """``datasets`` (~0.7 s to import), loaded by the tests that read an export, not at
    collection; it reads the offline switches when imported: never touch the network."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    return datasets


def _load(out: Path, tmp_path: Path) -> datasets.DatasetDict:
    datasets = _datasets()
    assert datasets.config.HF_HUB_OFFLINE and datasets.config.HF_DATASETS_OFFLINE
    # a fresh cache each time: datasets would reuse its cache of an earlier export at this path
    cache = tempfile.mkdtemp(prefix="hf-", dir=tmp_path)
    return datasets.load_dataset(str(out), cache_dir=cache)


def _exercises(docs: pl.DataFrame) -> pl.DataFrame:
    return docs.filter(pl.col("kind") == "exercise")


def test_chat_export_loads_with_roles_and_provenance(
    run_dir: Path, docs: pl.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "chat"
    code = _cli("export", "--run", str(run_dir), "--format", "chat", "--system", "Be a tutor.",
                "-o", str(out))  # fmt: skip
    assert code == 0
    ds = _load(out, tmp_path)
    assert list(ds) == ["train"]
    train = ds["train"]
    exercises = _exercises(docs)
    assert train.num_rows == exercises.height
    by_id = {r["id"]: r for r in exercises.iter_rows(named=True)}
    for row in train:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == "Be a tutor."
        doc = by_id[row["id"]]
        structured = json.loads(doc["structured"])
        user, answer = row["messages"][1]["content"], row["messages"][2]["content"]
        assert user.startswith(structured["problem"])
        if doc["exercise_type"] == "code":
            assert structured["solution"] in answer and structured["tests"] not in user
        elif doc["exercise_type"] == "quantitative":
            assert structured["worked_solution"] in answer
            assert answer.endswith(f"**Final answer:** {structured['final_answer']}")
        else:
            assert answer == structured["answer"].strip()
        for col in ("taxonomy_path", "template", "model", "verified", "parent_id"):
            assert row[col] == doc[col], col
    assert any(r["parent_id"] for r in train)  # Evol-Instruct children keep their parent
    card = (out / "README.md").read_text()
    assert "Teacher model(s): `fake-model`" in card and "config_name: default" in card


def test_alpaca_and_sharegpt_fields(run_dir: Path, docs: pl.DataFrame, tmp_path: Path) -> None:
    alpaca, sharegpt = tmp_path / "alpaca", tmp_path / "sharegpt"
    export_run(run_dir, alpaca, ExportOptions(format="alpaca"))
    export_run(run_dir, sharegpt, ExportOptions(format="sharegpt", jsonl=True))
    a = _load(alpaca, tmp_path)["train"]
    s = _load(sharegpt, tmp_path)["train"]
    assert {"instruction", "input", "output", "id"} <= set(a.column_names)
    assert list((sharegpt / "data").glob("train-*.jsonl"))
    code_rows = [r for r in a if r["exercise_type"] == "code"]
    assert code_rows and all(r["input"].startswith("```python\ndef ") for r in code_rows)
    assert all(r["input"] == "" for r in a if r["exercise_type"] != "code")
    assert [[t["from"] for t in r["conversations"]] for r in s] == [["human", "gpt"]] * len(s)
    outputs = {r["id"]: r["output"] for r in a}
    assert {r["id"]: r["conversations"][1]["value"] for r in s} == outputs


def test_text_export_sections_and_optionally_exercises(
    run_dir: Path, docs: pl.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "text"
    export_run(run_dir, out, ExportOptions(format="text"))
    rows = _load(out, tmp_path)["train"]
    assert set(rows["kind"]) == {"section"}
    assert sorted(rows["text"]) == sorted(docs.filter(pl.col("kind") == "section")["text"])
    export_run(run_dir, out, ExportOptions(format="text", kinds=("section", "exercise")))
    rows = _load(out, tmp_path)["train"]
    assert rows.num_rows == docs.height
    by_id = {r["id"]: r for r in _exercises(docs).iter_rows(named=True)}
    exercises = [r for r in rows if r["kind"] == "exercise"]
    assert len(exercises) == len(by_id) > 0
    for row in exercises:  # rendered as text: the problem, then its worked answer
        fields = json.loads(by_id[row["id"]]["structured"])
        answer = fields.get("solution") or fields.get("worked_solution") or fields["answer"]
        assert row["text"].index(fields["problem"].strip()) < row["text"].index(answer.strip())


def test_filters_verified_only(run_dir: Path, docs: pl.DataFrame, tmp_path: Path) -> None:
    summary = export_run(run_dir, tmp_path / "v", ExportOptions(format="chat", verified_only=True))
    verified = _exercises(docs).filter(pl.col("verified").fill_null(False))
    assert 0 < summary.counts["train"] == verified.height < _exercises(docs).height


def test_split_by_node_never_shares_a_node(
    run_dir: Path, docs: pl.DataFrame, tmp_path: Path
) -> None:
    for level, depth in (("subject", 2), ("node", None)):
        out = tmp_path / level
        code = _cli("export", "--run", str(run_dir), "--format", "chat", "--split-by", "node",
                    "--split-level", level, "--test-fraction", "0.3", "-o", str(out))  # fmt: skip
        assert code == 0
        ds = _load(out, tmp_path)
        assert set(ds) == {"train", "test"}

        train, test = (
            {"/".join(p.split("/")[:depth]) for p in ds[split]["taxonomy_path"]}
            for split in ("train", "test")
        )
        assert train and test and not train & test
        assert ds["train"].num_rows + ds["test"].num_rows == _exercises(docs).height
        card = (out / "README.md").read_text()
        assert "split: test" in card and "path: data/test-*.parquet" in card
        marker = json.loads((out / "export.json").read_text())
        assert f"{len(marker['test_nodes'])} of {marker['nodes']} node(s)" in card
        assert set(marker["test_nodes"]) == test


def test_scores_filter_and_absent_optional_columns(
    run_dir: Path, docs: pl.DataFrame, tmp_path: Path
) -> None:
    # a run as a later stage could leave it: scores added, optional columns absent
    run = tmp_path / "scored"
    (run / "documents").mkdir(parents=True)
    scored = docs.with_columns(
        edu_score=(pl.col("id").str.slice(0, 2).str.to_integer(base=16) % 6).cast(pl.Float64),
        relevance=pl.lit(0.5),
    ).drop("reasoning", "reasoning_tokens", "parent_id", strict=False)
    scored.write_parquet(run / "documents" / "part-00000.parquet")
    out = tmp_path / "out"
    summary = export_run(
        run, out, ExportOptions(format="chat", min_edu_score=3, reasoning="include")
    )
    expected = _exercises(scored).filter(pl.col("edu_score") >= 3)
    assert 0 < summary.counts["train"] == expected.height < _exercises(scored).height
    rows = _load(out, tmp_path)["train"]
    assert min(rows["edu_score"]) >= 3 and set(rows["relevance"]) == {0.5}
    assert "parent_id" not in rows.column_names and "reasoning" not in rows.column_names
    assert not any("<think>" in r["messages"][-1]["content"] for r in rows)


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=40, unique=True),
    fraction=st.floats(min_value=0.01, max_value=0.99),
    seed=st.integers(0, 1000),
)
def test_node_assignment_is_a_partition_with_both_sides(
    nodes: list[str], fraction: float, seed: int
) -> None:
    test = assign_test(nodes, fraction, seed)
    assert test < set(nodes)  # proper subset: train is never empty
    assert test  # and test never is
    assert assign_test(list(reversed(nodes)), fraction, seed) == test  # order does not matter
    # a node keeps its side when the corpus grows (unless the small-split fallback moved it)
    grown = assign_test([*nodes, *(f"{n}-extra" for n in nodes)], fraction, seed)
    moved = {n for n in nodes if (n in test) != (n in grown)}
    assert len(moved) <= 2


def _digest(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def test_rerun_is_byte_identical_and_replaces_only_exports(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = ExportOptions(format="chat", split_by="node", test_fraction=0.3)
    export_run(run_dir, out, opts)
    first = _digest(out)
    export_run(run_dir, out, opts)
    assert _digest(out) == first
    assert {p.name for p in tmp_path.iterdir()} == {"out"}  # no staging left behind
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    code = _cli("export", "--run", str(run_dir), "--format", "chat", "-o", str(stranger))
    assert code == 2 and (stranger / "notes.txt").read_text() == "keep me"


def test_a_failed_rerun_leaves_the_previous_export_whole(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _cli("export", "--run", str(run_dir), "--format", "chat", "-o", str(out)) == 0
    first = _digest(out)
    rows = pl.read_parquet(out / "data" / "*.parquet")
    assert rows.height > 0  # no --system: the user and the assistant only
    assert {tuple(m["role"] for m in ms) for ms in rows["messages"].to_list()} == {
        ("user", "assistant")
    }
    # This one fails after it has read every shard (nothing matches): the staging directory
    # goes, the export that was there stays as it was.
    code = _cli("export", "--run", str(run_dir), "--format", "text", "--kinds", "solution",
                "-o", str(out))  # fmt: skip
    assert code == 2 and _digest(out) == first
    assert {p.name for p in tmp_path.iterdir()} == {"out"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "chat", "--min-edu-score", "3"], "no document has an 'edu_score'"),
        (["--format", "alpaca", "--kinds", "section"], "cannot export kind(s) section"),
        (["--format", "chat", "--split-by", "node", "--split-level", "x"], "--split-level"),
        (["--format", "text", "--system", "hi"], "--system applies"),
        (["--format", "text", "--kinds", "solution"], "no document matches"),
    ],
)
def test_user_errors_are_one_line_exit_2(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: Any, message: str
) -> None:
    out = tmp_path / "out"
    capsys.readouterr()
    code = _cli("export", "--run", str(run_dir), *argv, "-o", str(out))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.export-*"))  # nothing left


def test_explanation_style_template_is_opt_in_and_exports(tmp_path: Path) -> None:
    from builder.templates import check_templates

    shipped = Path(__file__).resolve().parent.parent / "templates"
    tset, problems = check_templates(shipped)
    assert not problems and tset is not None and "exercise_explained" not in tset
    small = {
        "walk": {"subtree": ["arithmetic"], "limit": 2},
        "generate": {"templates": ["exercise_explained"], "evolve": False},
    }
    with FakeOpenAIServer(responder=responder) as srv:
        config = make_project(tmp_path / "p", srv.base_url, small)
        optional = tmp_path / "p" / "templates" / "optional" / "exercise_explained.j2"
        (tmp_path / "p" / "templates" / "exercise_explained.j2").write_text(optional.read_text())
        assert _cli("build", "--config", str(config), "--no-progress") == 0
        prompts = [m["content"] for b in srv.requests for m in b["messages"]]
    assert any("say why this step is the right thing to do now" in p for p in prompts)
    out = tmp_path / "chat"
    summary = export_run(tmp_path / "outputs" / "test", out, ExportOptions(format="chat"))
    rows = _load(out, tmp_path)["train"]
    assert rows.num_rows == summary.counts["train"] > 0
    assert set(rows["template"]) == {"exercise_explained"}
    assert all(v is True for v in rows["verified"])  # checked by sympy like any quantitative
