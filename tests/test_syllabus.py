"""GLAN-style syllabi (builder/syllabus/) and `corpus syllabus ...` (builder/cli/syllabus.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from builder.errors import TaxonomyError, ValidationError
from builder.settings.syllabus import SyllabusSettings
from builder.syllabus import (
    approve_syllabus,
    generate_syllabi,
    is_subject,
    load_syllabus,
    sessions_sha256,
    subject_of,
    subjects,
    syllabus_path,
    syllabus_request,
    validate_syllabi,
)
from builder.taxonomy import Taxonomy, load_taxonomy
from tests.support.engine import config_for, fake_engine, is_repair, json_reply, prompt_of
from tests.support.fake_openai_server import FakeOpenAIServer, FakeReply
from tests.support.taxonomies import MATH, run_cli, write_taxonomy

SETTINGS = SyllabusSettings(sessions=3)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run where no corpus.toml is found, so the project's demo config does not apply."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def tax_dir(tmp_path: Path) -> Path:
    return write_taxonomy(tmp_path / "taxonomy", {"mathematics": MATH})


@pytest.fixture
def tax(tax_dir: Path) -> Taxonomy:
    return load_taxonomy(tax_dir)


def reply_for(subject: str, n: int = 3, tag: str = "") -> dict:
    return {
        "sessions": [
            {
                "title": f"{subject} session {i}{tag}",
                "goals": [f"Explain idea {i}"],
                "concepts": [f"{subject} concept {i}.{k}" for k in range(3 + i % 2)],
            }
            for i in range(n)
        ]
    }


def subject_in(body: dict[str, Any]) -> str:
    """The subject id a syllabus request is about (its name, lowercased, in this taxonomy)."""
    m = re.search(r"university course on (.+?) \(discipline", prompt_of(body))
    assert m is not None, prompt_of(body)
    return m.group(1).lower()


def sample_of(body: dict[str, Any]) -> int:
    return body["seed"]  # [llm] seed 0 + the request's sample_index


def good(n: int = 3) -> Any:
    """A responder: a valid syllabus for the subject asked about, tagged with the sample."""
    return json_reply(lambda b: reply_for(subject_in(b), n, f" v{sample_of(b)}"))


def generate(tax: Taxonomy, tmp_path: Path, ids: list[str] | None, **kwargs: Any):
    """generate_syllabi through the real engine on a fake server answering ``good()``."""
    with FakeOpenAIServer(responder=good()) as srv, fake_engine(srv, tmp_path) as llm:
        return generate_syllabi(tax, llm, ids, kwargs.pop("settings", SETTINGS), **kwargs)


# -- subjects ----------------------------------------------------------------------------------


def test_subjects_are_the_subject_level_nodes(tax: Taxonomy) -> None:
    assert [n.id for n in subjects(tax)] == ["algebra", "calculus", "topology"]
    assert subject_of(tax, "limits").id == "calculus"
    assert subject_of(tax, "calculus").id == "calculus"
    assert subject_of(tax, "mathematics") is None
    assert not is_subject(tax, "limits")


def test_subjects_of_a_taxonomy_without_level_names(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "science.yaml").write_text(
        "id: science\nname: Science\nchildren:\n"
        "  - id: chem\n    name: Chemistry\n    children:\n"
        "      - {id: bonding, name: Bonding}\n"
        "      - id: organic\n        name: Organic\n"
        "        children: [{id: alkanes, name: Alkanes}]\n"
    )
    tax = load_taxonomy(root)
    assert [n.id for n in subjects(tax)] == ["chem", "organic"]
    assert subject_of(tax, "alkanes").id == "organic"
    assert subject_of(tax, "bonding").id == "chem"
    assert subject_of(tax, "science") is None


# -- generation (the real engine against the loopback fake server) ---------------------------


def test_request_names_topics_prerequisites_and_bounds(tax: Taxonomy) -> None:
    req = syllabus_request(tax, "calculus", SETTINGS)
    prompt = req.messages[-1]["content"]
    assert "Calculus" in prompt and "Limits and continuity" in prompt and "Derivatives" in prompt
    assert "; Integrals" not in prompt, "proposed topics are left out by default"
    assert "Algebra" in prompt, "prerequisites are named"
    assert "exactly 3 class sessions" in prompt
    sessions = req.schema["properties"]["sessions"]
    assert sessions["minItems"] == sessions["maxItems"] == 3
    session_def = next(iter(req.schema["$defs"].values()))
    assert session_def["properties"]["concepts"]["minItems"] == 3
    assert session_def["properties"]["concepts"]["maxItems"] == 6
    assert req.id == "syllabus:calculus:0" and req.metadata["subject"] == "calculus"
    assert syllabus_request(tax, "calculus", SETTINGS, sample_index=1).sample_index == 1


def test_generate_writes_proposed_yaml_that_round_trips(tax: Taxonomy, tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=good()) as srv, fake_engine(srv, tmp_path) as llm:
        report = generate_syllabi(tax, llm, None, SETTINGS)
        sha = llm.request_sha256(syllabus_request(tax, "calculus", SETTINGS))
    assert [o.subject for o in report.written] == ["algebra", "calculus"]  # approved only
    assert srv.count("chat") == 2
    body = srv.requests[0]
    assert body["model"] == "fake-model" and body["response_format"]["type"] == "json_schema"
    path = syllabus_path(tax, "calculus")
    assert path == tax.root / "mathematics" / "syllabi" / "calculus.yaml"
    text = path.read_text()
    assert text.startswith("# Syllabus of Calculus")
    syl = load_syllabus(tax, "calculus")
    assert syl is not None and syl.status == "proposed" and not syl.edited
    assert syl.discipline == "mathematics"
    assert [s.to_dict() for s in syl.sessions] == reply_for("calculus", tag=" v0")["sessions"]
    assert syl.content_sha256 == sessions_sha256(syl.sessions)
    assert syl.generated_by["model"] == "fake-model"
    assert syl.generated_by["request_sha256"] == sha
    assert syl.generated_by["prompt_version"] == "syllabus-v1"
    assert validate_syllabi(tax) == []


def test_invalid_reply_is_repaired_then_retried_with_a_new_sample(
    tax: Taxonomy, tmp_path: Path
) -> None:
    bad = {"sessions": [{"title": "Only", "goals": ["g"], "concepts": ["one"]}]}

    def reply(body: dict[str, Any]) -> Any:
        return bad if sample_of(body) == 0 else reply_for("calculus")

    with FakeOpenAIServer(responder=json_reply(reply)) as srv, fake_engine(srv, tmp_path) as llm:
        report = generate_syllabi(tax, llm, ["calculus"], SETTINGS)
    assert [o.action for o in report.outcomes] == ["written"]
    # Sample 0 fails the schema, the engine's repair retry too; then sample 1 is asked for.
    assert [(sample_of(b), is_repair(b)) for b in srv.requests] == [
        (0, False),
        (0, True),
        (1, False),
    ]
    assert report.outcomes[0].attempts == 2


def test_punctuation_leaked_into_concepts_is_rejected(tax: Taxonomy, tmp_path: Path) -> None:
    # Small models leak JSON punctuation into strings; such a syllabus would steer generation
    # with noise, so it is retried and then reported, never written.
    junk = reply_for("calculus")
    junk["sessions"][1]["concepts"][0] = "]},{"
    with FakeOpenAIServer(responder=json_reply(lambda b: junk)) as srv:
        with fake_engine(srv, tmp_path) as llm, pytest.raises(ValidationError) as info:
            generate_syllabi(tax, llm, ["calculus"], SETTINGS)
    assert "not words" in str(info.value) and "subject 'calculus'" in str(info.value)
    assert srv.count("chat") == 2  # samples 0 and 1 ([syllabus] retries = 1)
    assert not syllabus_path(tax, "calculus").exists()


def test_goals_and_concepts_pass_one_words_check(tax: Taxonomy, tmp_path: Path) -> None:
    reply = reply_for("calculus")
    reply["sessions"][0]["goals"] = ["'], ['"]
    with FakeOpenAIServer(responder=json_reply(lambda b: reply)) as srv:
        with fake_engine(srv, tmp_path) as llm:
            report = generate_syllabi(tax, llm, ["calculus"], SETTINGS, strict=False)
    assert report.failed[0].detail.startswith("sample 0: session 1 has text that is not words: ")
    # The same check for hand-written files, goals and concepts alike; short real words pass.
    f = write(tax, "calculus.yaml", GOOD.replace("[Compute limits]", '["], ["]'))
    assert [(p.line, p.message) for p in validate_syllabi(tax)] == [
        (5, "session 1 goals item 1 is not words: '], ['")
    ]
    write(tax, "calculus.yaml", GOOD.replace("squeeze theorem]", "squeeze theorem, 1]"))
    assert [p.message for p in validate_syllabi(tax)] == [
        "session 1 concepts item 4 is not words: '1'"
    ]
    write(tax, "calculus.yaml", GOOD.replace("squeeze theorem]", "C]"))
    assert validate_syllabi(tax) == [] and f.exists()


def test_failures_name_the_subject_and_say_which_sample_to_try(
    tax: Taxonomy, tmp_path: Path
) -> None:
    def reply(body: dict[str, Any]) -> Any:
        if subject_in(body) == "algebra":
            return FakeReply('{"sessions": [', finish_reason="length")
        return json.dumps(reply_for("calculus"))

    with FakeOpenAIServer(responder=reply) as srv, fake_engine(srv, tmp_path) as llm:
        with pytest.raises(ValidationError) as info:
            generate_syllabi(tax, llm, ["algebra", "calculus"], SETTINGS)
        message = str(info.value)
        assert "subject 'algebra'" in message and "2 attempt(s)" in message
        assert "truncated" in message
        assert "rerun with `--sample 2`" in message, "a plain rerun repeats the cached failure"
        assert syllabus_path(tax, "calculus").exists()
        assert not syllabus_path(tax, "algebra").exists()
        calls = srv.count("chat")
        report = generate_syllabi(tax, llm, ["algebra"], SETTINGS, strict=False, sample=2)
        assert [o.action for o in report.outcomes] == ["failed"]
        assert srv.count("chat") > calls, "--sample 2 asks the model again"
        assert "`--sample 4`" in str(report.problems()[0])


def test_duplicate_concepts_and_session_counts_are_checked(tax: Taxonomy, tmp_path: Path) -> None:
    dup = reply_for("calculus")
    dup["sessions"][0]["concepts"] = ["Limit", "limit", " Limit "]

    def reply(body: dict[str, Any]) -> Any:
        return dup if sample_of(body) == 0 else reply_for("calculus", n=2)

    with FakeOpenAIServer(responder=json_reply(reply)) as srv, fake_engine(srv, tmp_path) as llm:
        report = generate_syllabi(tax, llm, ["calculus"], SETTINGS, strict=False)
    detail = report.failed[0].detail
    assert "sample 0: session 1 has only 1 distinct concept(s)" in detail
    assert "sample 1: " in detail and "sessions" in detail.split("sample 1: ")[1]
    tolerant = SyllabusSettings(sessions=4, session_tolerance=0.25)  # accepts 3..5
    report = generate(tax, tmp_path / "t", ["calculus"], settings=tolerant, force=True)
    assert report.written and len(load_syllabus(tax, "calculus", tolerant).sessions) == 3


def test_regeneration_never_overwrites_edited_or_approved(tax: Taxonomy, tmp_path: Path) -> None:
    path = syllabus_path(tax, "calculus")
    with FakeOpenAIServer(responder=good()) as srv, fake_engine(srv, tmp_path) as llm:
        generate_syllabi(tax, llm, ["calculus"], SETTINGS)
        assert "v0" in path.read_text()
        # An unedited proposed syllabus is regenerated (a new sample: the old one is cached).
        report = generate_syllabi(tax, llm, ["calculus"], SETTINGS, sample=1)
        assert report.written and "v1" in path.read_text()
        # A curator edit protects it.
        edited = path.read_text().replace("calculus concept 0.0", "epsilon-delta definition")
        path.write_text(edited + "# curator note\n")
        calls = srv.count("chat")
        report = generate_syllabi(tax, llm, ["calculus"], SETTINGS, sample=2)
        assert [o.action for o in report.outcomes] == ["kept"] and srv.count("chat") == calls
        outcome = str(report.outcomes[0])
        assert "a curator edited" in outcome and "--force" in outcome and path.name in outcome
        assert path.read_text() == edited + "# curator note\n"
        # Approval protects it too; --force overrides both.
        approve_syllabus(tax, "calculus")
        kept = generate_syllabi(tax, llm, ["calculus"], SETTINGS, sample=2).kept
        assert "it is approved" in str(kept[0])
        report = generate_syllabi(tax, llm, ["calculus"], SETTINGS, force=True, sample=2)
    assert report.written and "v2" in path.read_text()
    assert load_syllabus(tax, "calculus").status == "proposed"


def test_only_missing_and_unreadable_files(tax: Taxonomy, tmp_path: Path) -> None:
    path = syllabus_path(tax, "calculus")
    path.parent.mkdir(parents=True)
    path.write_text("sessions: [unclosed\n")
    report = generate(tax, tmp_path, ["calculus", "algebra"])
    assert [o.action for o in report.outcomes] == ["kept", "written"]
    assert "cannot be read" in report.outcomes[0].detail
    report = generate(tax, tmp_path, None, only_missing=True)
    assert [o.action for o in report.outcomes] == ["kept", "kept"]


def test_generate_refuses_non_subjects(tax: Taxonomy, tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=good()) as srv, fake_engine(srv, tmp_path) as llm:
        with pytest.raises(TaxonomyError, match="not a subject") as info:
            generate_syllabi(tax, llm, ["limits"], SETTINGS)
        assert "its subject is 'calculus'" in str(info.value)
        with pytest.raises(TaxonomyError, match="did you mean"):
            generate_syllabi(tax, llm, ["calculas"], SETTINGS)
    assert srv.count("chat") == 0


# -- validation --------------------------------------------------------------------------------


def write(tax: Taxonomy, name: str, text: str, discipline: str = "mathematics") -> Path:
    path = tax.root / discipline / "syllabi" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
subject: calculus
status: proposed
sessions:
  - title: Limits
    goals: [Compute limits]
    concepts: [limit, continuity, squeeze theorem]
"""


def test_validation_reports_file_and_line(tax: Taxonomy) -> None:
    write(tax, "calculus.yaml", GOOD)
    assert validate_syllabi(tax) == []
    bad = GOOD.replace("status: proposed", "status: done\nauthor: me").replace(
        "concepts: [limit, continuity, squeeze theorem]", "concepts: [limit]"
    )
    f = write(tax, "calculus.yaml", bad)
    problems = validate_syllabi(tax)
    got = {(p.line, p.message.split(" ")[0]) for p in problems}
    assert (3, "unknown") in got  # author:
    assert (2, "status") in got
    assert (7, "session") in got  # 1 concept where 3-6 are allowed
    assert all(p.file == f for p in problems)
    assert "between 3 and 6" in str(problems[-1])


@pytest.mark.parametrize(
    ("name", "text", "line", "fragment"),
    [
        ("calculus.yaml", "subject: calculus\nsessions: [\n", 3, "YAML syntax error"),
        ("calculus.yaml", "subject: calculus\nsessions: []\n", 2, "non-empty list of sessions"),
        ("calculus.yaml", GOOD.replace("calculus", "calculas", 1), 1, "not in the taxonomy"),
        ("algebra.yaml", GOOD, 1, "must be named calculus.yaml"),
        ("limits.yaml", GOOD.replace("calculus", "limits", 1), 1, "is not a subject"),
        (
            "calculus.yaml",
            GOOD.replace("  - title: Limits\n", "  - goals: [x]\n    title: ''\n"),
            4,
            "needs a non-empty title",
        ),
        ("calculus.yaml", "- just\n- a list\n", 1, "must be one mapping"),
    ],
)
def test_validation_problems(tax: Taxonomy, name: str, text: str, line: int, fragment: str) -> None:
    f = write(tax, name, text)
    problems = validate_syllabi(tax)
    assert problems, "the problem is found"
    assert any(p.line == line and fragment in p.message and p.file == f for p in problems), [
        str(p) for p in problems
    ]


def test_wrong_discipline_folder(tax: Taxonomy) -> None:
    write(tax, "calculus.yaml", GOOD, discipline="physics")
    problems = validate_syllabi(tax)
    assert any("move the file to mathematics/syllabi/calculus.yaml" in str(p) for p in problems)


def test_load_syllabus_raises_for_invalid_files(tax: Taxonomy) -> None:
    assert load_syllabus(tax, "calculus") is None
    write(tax, "calculus.yaml", "subject: calculus\nsessions: []\n")
    with pytest.raises(ValidationError, match="calculus.yaml:2"):
        load_syllabus(tax, "calculus")


def test_taxonomy_validate_includes_syllabi(tax: Taxonomy, tax_dir: Path) -> None:
    write(tax, "calculus.yaml", GOOD.replace("status: proposed", "status: done"))
    code, out, err = run_cli("taxonomy", "validate", "--taxonomy", str(tax_dir))
    assert code == 2
    assert "calculus.yaml:2: status must be proposed or approved" in err


# -- approve and show --------------------------------------------------------------------------


def test_approve_keeps_comments_and_edits(tax: Taxonomy, tax_dir: Path, tmp_path: Path) -> None:
    generate(tax, tmp_path, ["calculus"])
    path = syllabus_path(tax, "calculus")
    path.write_text(path.read_text().replace("- Explain idea 1", "- Explain idea 1  # mine"))
    code, out, err = run_cli("syllabus", "approve", "calculus", "--taxonomy", str(tax_dir))
    assert code == 0, err
    text = path.read_text()
    assert "status: approved" in text and "# mine" in text and text.startswith("# Syllabus of")
    syl = load_syllabus(tax, "calculus")
    assert syl.status == "approved" and not syl.edited
    code, _, err = run_cli("syllabus", "approve", "algebra", "--taxonomy", str(tax_dir))
    assert code == 2 and "has no syllabus" in err and "corpus syllabus generate algebra" in err


def test_approve_refuses_invalid_files(tax: Taxonomy) -> None:
    write(tax, "calculus.yaml", GOOD.replace("squeeze theorem]", "]").replace("continuity, ", ""))
    with pytest.raises(ValidationError, match="key concept"):
        approve_syllabus(tax, "calculus")


def test_show_and_list(tax: Taxonomy, tax_dir: Path, tmp_path: Path) -> None:
    generate(tax, tmp_path, ["calculus"])
    code, out, _ = run_cli("syllabus", "show", "calculus", "--taxonomy", str(tax_dir))
    assert code == 0
    assert out.startswith("Calculus (mathematics/calculus): 3 sessions [proposed]")
    assert "1. calculus session 0 v0" in out and "concepts: calculus concept 0.0" in out
    code, out, _ = run_cli("syllabus", "show", "calculus", "--json", "--taxonomy", str(tax_dir))
    assert json.loads(out)["sessions"][2]["title"] == "calculus session 2 v0"
    code, out, _ = run_cli("syllabus", "show", "calculus", "--yaml", "--taxonomy", str(tax_dir))
    assert out == syllabus_path(tax, "calculus").read_text()
    code, out, _ = run_cli("syllabus", "list", "--taxonomy", str(tax_dir))
    assert out.splitlines() == [
        "mathematics/algebra\tmissing\t0 sessions",
        "mathematics/calculus\tproposed\t3 sessions",
        "mathematics/topology\tmissing\t0 sessions",
    ]
    code, _, err = run_cli("syllabus", "show", "algebra", "--taxonomy", str(tax_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "corpus syllabus generate algebra" in err


def test_show_of_a_topic_points_at_its_subject(tax_dir: Path) -> None:
    code, out, err = run_cli("syllabus", "show", "limits", "--taxonomy", str(tax_dir))
    assert code == 2 and out == ""
    assert err.strip() == (
        f"{tax_dir / 'mathematics.yaml'}:22: 'limits' is not a subject (level 'topic'); "
        "syllabi belong to subjects (its subject is 'calculus': `corpus syllabus show "
        "calculus`)"
    )
    assert "syllabus generate limits" not in err


# -- the CLI against the fake OpenAI server, and the embedded model ----------------------------


def test_cli_generate_against_fake_server(tax: Taxonomy, tax_dir: Path, tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=good(n=2)) as srv:
        cfg = config_for(
            srv,
            tmp_path / "corpus.toml",
            f'[taxonomy]\ndir = "{tax_dir}"\n[syllabus]\nmin_concepts = 3\nretries = 0\n',
        )
        code, out, err = run_cli("syllabus", "generate", "--config", str(cfg), "--sessions", "2")
        assert code == 0, err
        assert srv.count("chat") == 2
        assert "2 written, 0 kept, 0 failed" in err
        # Rerun: answered from the cache, no new HTTP call.
        code, out, err = run_cli(
            "syllabus", "generate", "calculus", "--config", str(cfg), "--sessions", "2"
        )
        assert code == 0, err
        assert srv.count("chat") == 2
        # A failure (three sessions asked, two given) names the --sample to try next.
        code, out, err = run_cli("syllabus", "generate", "calculus", "--config", str(cfg),
                                 "--sessions", "3", "--force")  # fmt: skip
        assert code == 2 and "rerun with `--sample 1`" in err
    syl = load_syllabus(tax, "algebra")
    assert syl is not None and syl.generated_by["model"] == "fake-model"
    assert [s.title for s in syl.sessions] == ["algebra session 0 v0", "algebra session 1 v0"]


def test_cli_generate_prints_each_progress_line_once(tax_dir: Path, tmp_path: Path) -> None:
    # The `llm:` log line used to come twice for the last request (an update right before the
    # close). With a log period of ~0 every change of the counters is one line, none twice.
    with FakeOpenAIServer(responder=good(n=2)) as srv:
        cfg = config_for(
            srv,
            tmp_path / "corpus.toml",
            f'progress_interval_s = 0.000001\nmax_concurrency = 1\n[taxonomy]\ndir = "{tax_dir}"\n'
            "[syllabus]\nmin_concepts = 3\nretries = 0\n",
        )
        code, out, err = run_cli("syllabus", "generate", "--config", str(cfg), "--sessions", "2")
        assert code == 0, err
        assert srv.count("chat") == 2
    counters = [line.split(" queued")[0] for line in err.splitlines() if line.startswith("llm: ")]
    assert counters, err
    assert len(counters) == len(set(counters)), err
    assert [c for c in counters if c.startswith("llm: 2/2 done")] == [
        "llm: 2/2 done (0 cached, 0 failed), 0 sending, 0"
    ], err


@pytest.mark.integration
def test_embedded_model_generates_or_records_why_not(tax: Taxonomy, tmp_path: Path) -> None:
    """The mechanics on the embedded model, never its content (which changes with the CPU):
    the request is sent, the reply is parsed into a valid syllabus or the failure recorded
    with its reason, and the server is started and stopped."""
    from builder.llm import open_engine
    from builder.settings.llm import LLMSettings

    # Small on purpose: two short sessions keep generation to a few seconds on 2 cores.
    small = SyllabusSettings(
        sessions=2, min_concepts=1, max_concepts=3, max_goals=1, max_tokens=256, retries=0
    )
    with open_engine(LLMSettings(), cache_dir=tmp_path / "cache", progress=False) as llm:
        report = generate_syllabi(tax, llm, ["calculus"], small, strict=False)
        server = llm.embedded
        assert server is not None and server.running, "the first cache miss started it"
        proc = server.proc
        assert llm.stats.http_requests >= 1 and llm.stats.results == 1
    assert proc is not None and proc.poll() is not None, "stopped when the engine closed"
    assert not server.running
    (outcome,) = report.outcomes
    assert outcome.attempts == 1
    if outcome.action == "written":
        assert validate_syllabi(tax, small) == []
        syl = load_syllabus(tax, "calculus", small)
        assert syl is not None and syl.generated_by["model"]
    else:
        assert outcome.action == "failed" and not syllabus_path(tax, "calculus").exists()
        assert outcome.detail.startswith("sample 0: ") and len(outcome.detail) > len("sample 0: ")
