"""Request-level tests of every route of the review app (Starlette's TestClient), on a run
that ``corpus build`` wrote against the loopback fake OpenAI server: pages, writes and flags
(the guards are in test_review_security.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient

from builder.review.flags import load_flags
from builder.review.queries import FACETS
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import responder
from tests.support.review import (  # noqa: F401  (fixtures)
    GROUP,
    PROPOSED_COMMENT,
    ReviewProject,
    add_proposed_nodes,
    built_project_fixture,
    client_fixture,
    csrf,
    make_client,
    post,
    project_fixture,
)

pytestmark = GROUP

# -- pages ------------------------------------------------------------------------------------


def test_home_redirects_to_the_taxonomy(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/taxonomy"


def test_taxonomy_shows_per_node_counts_of_the_run(
    client: TestClient, project: ReviewProject
) -> None:
    corpus, rejected = project.corpus(), project.rejected()
    r = client.get("/taxonomy")
    assert r.status_code == 200
    row = re.search(r'data-id="algorithms">(.*?)</tr>', r.text, re.S)
    assert row
    cells = re.findall(r'<td class="n">([^<]*)</td>', row.group(1))
    docs = corpus.filter(pl.col("taxonomy_path").str.starts_with("computing/algorithms"))
    rej = rejected.filter(pl.col("taxonomy_path").str.starts_with("computing/algorithms"))
    dups = rej.filter(pl.col("stage") == "dedup").height
    assert cells[0] == f"{docs.height:,}"
    assert cells[1] == f"{int(docs['n_tokens'].sum()):,}"
    generated = docs.height + rej["id"].n_unique()
    assert cells[2] == f"{100 * rej['id'].n_unique() / generated:.1f}%"
    assert cells[3] == f"{100 * dups / generated:.1f}%"
    assert dups > 0  # the test responder makes one exact duplicate under algorithms
    assert 'data-id="graphs"' in r.text and "proposed" in r.text


def test_taxonomy_search_by_name_or_id(client: TestClient) -> None:
    r = client.get("/taxonomy", params={"q": "graph algo"})
    assert 'id="match-count">1 match' in r.text
    assert 'data-id="graphs"' in r.text and 'data-id="algorithms"' in r.text
    assert 'data-id="functions"' not in r.text  # not on the path to a match
    r = client.get("/taxonomy", params={"q": "binary-search"})
    assert 'data-id="binary-search"' in r.text and 'data-id="loops"' not in r.text


def test_proposals_lists_nodes_and_syllabi_with_context(client: TestClient) -> None:
    r = client.get("/proposals")
    assert r.status_code == 200
    node = re.search(r'<tr id="node-graphs">(.*?)</tr>', r.text, re.S)
    assert node and "Graph algorithms" in node.group(1)
    assert "Computing" in node.group(1) and "Algorithms" in node.group(1)  # where it goes
    assert "Loops" in node.group(1) and "Sorting" in node.group(1)  # what is already there
    syl = re.search(r'<tr id="syllabus-programming">(.*?)</tr>', r.text, re.S)
    assert syl and "Variables and types" in syl.group(1)  # the subject's topics
    assert "Programming Basics foundations 1" in syl.group(1)  # its sessions


def test_documents_filters_match_a_direct_polars_query(
    client: TestClient, project: ReviewProject
) -> None:
    corpus, rejected = project.corpus(), project.rejected()
    r = client.get("/documents", params={"kind": "section", "node": "algorithms"})
    assert r.status_code == 200
    kept = corpus.filter(
        (pl.col("kind") == "section")
        & pl.col("taxonomy_path").str.starts_with("computing/algorithms")
    )
    assert _total(r.text, "kept") == kept.height
    assert set(_ids(r.text, "kept")) == set(kept["id"])
    rej = rejected.filter(pl.col("kind") == "section")
    assert _total(r.text, "rejected") == rej.height > 0  # kept and rejected side by side

    reason = rejected["reason"][0]
    r = client.get("/documents", params={"status": "rejected", "reason": reason})
    assert 'id="side-kept"' not in r.text
    assert _total(r.text, "rejected") == rejected.filter(pl.col("reason") == reason).height

    r = client.get("/documents", params={"verified": "true", "status": "kept"})
    assert _total(r.text, "kept") == corpus.filter(pl.col("verified")).height > 0
    r = client.get("/documents", params={"verified": "null", "status": "kept"})
    assert _total(r.text, "kept") == corpus.filter(pl.col("verified").is_null()).height
    template = corpus["template"][0]
    r = client.get("/documents", params={"template": template, "status": "kept"})
    assert _total(r.text, "kept") == corpus.filter(pl.col("template") == template).height


@pytest.mark.parametrize("facet", FACETS)
def test_documents_filter_by_every_facet(
    client: TestClient, project: ReviewProject, facet: str
) -> None:
    """kind, template, audience and style each filter both sides as Polars would."""
    corpus, rejected = project.corpus(), project.rejected()
    value = corpus[facet].drop_nulls().mode().sort()[0]
    r = client.get("/documents", params={facet: value})
    assert r.status_code == 200
    kept = corpus.filter(pl.col(facet) == value)
    assert _total(r.text, "kept") == kept.height > 0
    assert set(_ids(r.text, "kept")) == set(kept["id"].sort().head(50))
    assert _total(r.text, "rejected") == rejected.filter(pl.col(facet) == value).height
    r = client.get("/documents", params={facet: "no-such-" + facet})
    assert _total(r.text, "kept") == 0 and _total(r.text, "rejected") == 0


def test_quality_scores_are_shown_and_filterable(project: ReviewProject) -> None:
    """A run with a score column (what quality gates add) gets a score filter and per-node
    means on the taxonomy page."""
    for shard in (project.run_dir / "documents").glob("part-*.parquet"):
        df = pl.read_parquet(shard)
        scores = [round((i * 37 % 100) / 100, 2) for i in range(df.height)]
        df.with_columns(pl.Series("quality_score", scores)).write_parquet(shard)
    corpus = project.corpus()
    client = make_client(project)
    r = client.get("/documents", params={"score": "quality_score", "min_score": "0.5"})
    assert _total(r.text, "kept") == corpus.filter(pl.col("quality_score") >= 0.5).height
    r = client.get("/documents", params={"score": "quality_score", "max_score": "0.2"})
    assert _total(r.text, "kept") == corpus.filter(pl.col("quality_score") <= 0.2).height
    assert client.get("/documents", params={"score": "nope", "min_score": "1"}).status_code == 400
    assert (
        client.get("/documents", params={"score": "quality_score", "min_score": "x"}).status_code
        == 400
    )
    page = client.get("/taxonomy").text
    assert "<th>quality_score</th>" in page
    row = re.search(r'data-id="computing">(.*?)</tr>', page, re.S)
    cells = re.findall(r'<td class="n">([^<]*)</td>', row.group(1))
    headers = re.findall(r"<th>([^<]*)</th>", page)
    assert "relevance" in headers  # the relevance gate's score is a score too
    assert cells[headers.index("quality_score") - 1] == f"{corpus['quality_score'].mean():.3f}"


def test_documents_pages_through_in_id_order(project: ReviewProject) -> None:
    client = make_client(project, page_size=5)
    ids = sorted(project.corpus()["id"].to_list())
    first = client.get("/documents", params={"status": "kept"}).text
    assert _ids(first, "kept") == ids[:5]
    nxt = re.search(r'href="/documents\?([^"]*kept_offset=5[^"]*)">next', first)
    assert nxt
    second = client.get("/documents?" + nxt.group(1).replace("&amp;", "&")).text
    assert _ids(second, "kept") == ids[5:10]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "everything"},
        {"node": "no-such-node"},
        {"verified": "maybe"},
        {"kept_offset": "-1"},
    ],
)
def test_documents_refuses_bad_filter_values(client: TestClient, params: dict[str, str]) -> None:
    r = client.get("/documents", params=params)
    assert r.status_code == 400 and 'id="problems"' in r.text


def test_document_page_shows_text_provenance_and_verification(
    client: TestClient, project: ReviewProject
) -> None:
    from builder.llm.cache import Cache

    row = project.corpus().filter(pl.col("verified")).row(0, named=True)
    r = client.get(f"/documents/{row['id']}")
    assert r.status_code == 200
    assert _unescape(re.search(r'id="doc-text">(.*?)</pre>', r.text, re.S).group(1)) == row["text"]
    assert 'id="provenance-source">cache' in r.text
    request, _ = Cache(project.cache).raw(row["request_sha256"])
    sent = [
        _unescape(m)
        for m in re.findall(r'<div class="role">[^<]*</div><pre>(.*?)</pre>', r.text, re.S)
    ]
    assert sent == [m["content"] for m in request["messages"]]
    assert "verified: <strong>True</strong>" in r.text
    assert 'id="flag-form"' in r.text

    rej = project.rejected().row(0, named=True)
    r = client.get(f"/documents/{rej['id']}")
    assert 'id="doc-status">rejected' in r.text and rej["reason"] in r.text
    assert 'id="flag-form"' not in r.text  # only corpus documents can be flagged


def test_provenance_is_re_rendered_when_the_cache_is_gone(
    project: ReviewProject, tmp_path: Path
) -> None:
    row = project.corpus().row(0, named=True)
    with_cache = make_client(project).get(f"/documents/{row['id']}").text
    without = make_client(project, cache_dir=tmp_path / "empty-cache").get(
        f"/documents/{row['id']}"
    )
    assert 'id="provenance-source">re-rendered' in without.text

    def messages(page: str) -> list[str]:
        return re.findall(r'<div class="message">(.*?)</div>\n', page, re.S)

    assert messages(without.text) and messages(without.text) == messages(with_cache)


def test_verification_output_of_an_exercise_the_verifier_rejected(
    project: ReviewProject,
) -> None:
    """A document the verify stage dropped shows the verifier's reason and output, and is
    listed under that reason (the fixture's responder writes only correct exercises, so the
    rejected row is added here in rejected.parquet's own schema)."""
    rejected = project.rejected()
    exercise = project.corpus().filter(pl.col("exercise_type") == "code").row(0, named=True)
    detail = "AssertionError: assert f(2) == 5 (the test run printed: got 4)"
    extra = {
        **{c: exercise.get(c) for c in rejected.columns},
        "id": "f" * 32,
        "stage": "verify",
        "reason": "tests_failed",
        "detail": detail,
        "verified": False,
    }
    pl.concat([rejected, pl.DataFrame([extra], schema=rejected.schema)]).write_parquet(
        project.run_dir / "rejected.parquet"
    )
    client = make_client(project)
    r = client.get(f"/documents/{'f' * 32}")
    assert r.status_code == 200 and 'id="doc-status">rejected' in r.text
    verification = re.search(r'id="verification">(.*?)</p>', r.text, re.S)
    assert verification and "verified: <strong>False</strong>" in verification.group(1)
    assert "tests_failed: " + _escape(detail) in verification.group(1)
    r = client.get("/documents", params={"status": "rejected", "reason": "tests_failed"})
    assert _ids(r.text, "rejected") == ["f" * 32]


@pytest.mark.parametrize("doc_id", ["0" * 32, "..%2F..%2Fcorpus.toml", "a b"])
def test_unknown_or_malformed_document_ids_are_404(client: TestClient, doc_id: str) -> None:
    assert client.get(f"/documents/{doc_id}").status_code == 404


def test_static_files_are_served(client: TestClient) -> None:
    assert "select-all" in client.get("/static/review.js").text
    # encoded traversals reach the static handler (a plain ../ is resolved by the client)
    for url in ("/static/..%2Fapp.py", "/static/%2e%2e%2fapp.py", "/static/%2fetc%2fpasswd"):
        r = client.get(url)
        assert r.status_code == 404 and "create_app" not in r.text and "root:" not in r.text


# -- writes through the CLI's editors ---------------------------------------------------------


def test_approve_a_node_keeps_comments(client: TestClient, project: ReviewProject) -> None:
    before = project.computing_yaml.read_text(encoding="utf-8")
    r = post(client, "/proposals/nodes", {"action": "approve", "ids": ["graphs"]})
    assert r.status_code == 200 and "approved graphs" in r.text
    after = project.computing_yaml.read_text(encoding="utf-8")
    assert f"status: approved  {PROPOSED_COMMENT}" in after
    assert "# Test taxonomy: computing" in after
    assert after == before.replace("status: proposed", "status: approved")


def test_approve_and_reject_many_nodes_at_once(client: TestClient, project: ReviewProject) -> None:
    add_proposed_nodes(project, ["trees", "heaps", "tries"])
    proposed = re.findall(r'<tr id="node-([^"]+)">', client.get("/proposals").text)
    assert proposed == ["graphs", "trees", "heaps", "tries"]
    r = post(client, "/proposals/nodes", {"action": "approve", "ids": ["graphs", "trees"]})
    assert r.status_code == 200 and "approved graphs" in r.text and "approved trees" in r.text
    r = post(client, "/proposals/nodes", {"action": "reject", "ids": ["heaps", "tries"]})
    assert r.status_code == 200
    text = project.computing_yaml.read_text(encoding="utf-8")
    assert (
        "status: proposed" not in text and text.count(f"status: approved  {PROPOSED_COMMENT}") == 2
    )
    assert "id: heaps" not in text and "id: tries" not in text
    assert "id: graphs" in text and "id: trees" in text
    assert re.findall(r'<tr id="node-([^"]+)">', client.get("/proposals").text) == []


def test_reject_a_node_removes_it(client: TestClient, project: ReviewProject) -> None:
    r = post(client, "/proposals/nodes", {"action": "reject", "ids": ["graphs"]})
    assert r.status_code == 200
    text = project.computing_yaml.read_text(encoding="utf-8")
    assert "graphs" not in text and "# Test taxonomy: computing" in text


def test_rejecting_an_approved_node_is_refused_and_writes_nothing(
    client: TestClient, project: ReviewProject
) -> None:
    before = project.computing_yaml.read_text(encoding="utf-8")
    r = post(client, "/proposals/nodes", {"action": "reject", "ids": ["loops", "graphs"]})
    assert r.status_code == 400 and "is approved" in r.text
    assert project.computing_yaml.read_text(encoding="utf-8") == before


def test_edit_a_proposed_node(client: TestClient, project: ReviewProject) -> None:
    r = post(
        client,
        "/proposals/nodes/graphs/edit",
        {"name": "Graphs", "description": "Vertices and edges.", "level": "topic", "weight": "2"},
    )
    assert r.status_code == 200 and "renamed" in r.text
    text = project.computing_yaml.read_text(encoding="utf-8")
    assert "name: Graphs\n" in text and "description: Vertices and edges." in text
    assert "weight: 2" in text and PROPOSED_COMMENT in text
    r = post(client, "/proposals/nodes/graphs/edit", {"weight": "heavy"})
    assert r.status_code == 400 and "must be a number" in r.text
    r = post(client, "/proposals/nodes/loops/edit", {"name": "Loops!"})
    assert r.status_code == 400 and "proposed nodes only" in r.text
    r = post(client, "/proposals/nodes/nope/edit", {"name": "x"})
    assert r.status_code == 404


def test_approve_and_reject_syllabi(project: ReviewProject) -> None:
    client = make_client(project)
    original = project.syllabus.read_text(encoding="utf-8")
    r = post(client, "/proposals/syllabi", {"action": "reject", "ids": ["programming"]})
    assert r.status_code == 200
    moved = project.syllabus.parent / ".rejected" / "programming.yaml"
    assert not project.syllabus.exists() and moved.read_text(encoding="utf-8") == original
    assert "syllabus-programming" not in client.get("/proposals").text

    moved.rename(project.syllabus)
    r = post(client, "/proposals/syllabi", {"action": "approve", "ids": ["programming"]})
    assert r.status_code == 200
    text = project.syllabus.read_text(encoding="utf-8")
    assert "status: approved" in text and "corpus syllabus approve programming" in text
    r = post(client, "/proposals/syllabi", {"action": "reject", "ids": ["programming"]})
    assert r.status_code == 400 and "approved" in r.text and project.syllabus.exists()
    r = post(client, "/proposals/syllabi", {"action": "approve", "ids": ["no-such"]})
    assert r.status_code == 400


def test_edit_a_session_of_a_proposed_syllabus(client: TestClient, project: ReviewProject) -> None:
    from builder.syllabus import load_syllabus
    from builder.taxonomy import load_taxonomy

    before = project.syllabus.read_text(encoding="utf-8")
    block = re.search(r"  - title: [^\n]* 2\n(?:    .*\n)+", before)
    assert block and 'id="edit-programming-2"' in client.get("/proposals").text
    form = {
        "title": "Loops and conditions",
        "goals": "Write a loop\r\nChoose a branch\r\n",
        "concepts": "for loop\nwhile loop\n\nif statement",
    }
    r = post(client, "/proposals/syllabi/programming/sessions/2/edit", form)
    assert (
        r.status_code == 200 and "session 2: title -&gt; &#39;Loops and conditions&#39;" in r.text
    )
    typed = (
        "  - title: Loops and conditions\n"
        "    goals:\n      - Write a loop\n      - Choose a branch\n"
        "    concepts:\n      - for loop\n      - while loop\n      - if statement\n"
    )
    # exactly what a curator would have typed: that session, nothing else (comments kept)
    after = project.syllabus.read_text(encoding="utf-8")
    assert after == before.replace(block.group(0), typed)
    syllabus = load_syllabus(load_taxonomy(project.taxonomy), "programming")
    assert syllabus.status == "proposed" and syllabus.edited  # regeneration now keeps it
    assert 'class="badge">edited' in client.get("/proposals").text

    for url, data, status, message in [
        (
            "/proposals/syllabi/programming/sessions/2/edit",
            {"title": " "},
            400,
            "needs a non-empty title",
        ),
        ("/proposals/syllabi/programming/sessions/9/edit", {"title": "x"}, 400, "no session 9"),
        ("/proposals/syllabi/programming/sessions/1/edit", {"colour": "x"}, 200, "nothing changed"),
        ("/proposals/syllabi/no-such/sessions/1/edit", {"title": "x"}, 404, "unknown subject"),
    ]:
        r = post(client, url, data)
        assert r.status_code == status and message in r.text, url
    assert project.syllabus.read_text(encoding="utf-8") == after  # nothing written
    post(client, "/proposals/syllabi", {"action": "approve", "ids": ["programming"]})
    r = post(client, "/proposals/syllabi/programming/sessions/1/edit", {"title": "x"})
    assert r.status_code == 400 and "not proposed" in r.text


def test_editing_a_malformed_syllabus_session_is_refused(
    client: TestClient, project: ReviewProject
) -> None:
    text = project.syllabus.read_text(encoding="utf-8")
    broken = re.sub(r"sessions:\n  - title: ", "sessions:\n  - just a string\n  - title: ", text)
    assert broken != text
    project.syllabus.write_text(broken, encoding="utf-8")
    r = post(client, "/proposals/syllabi/programming/sessions/1/edit", {"title": "Fixed"})
    assert r.status_code == 400 and "session 1" in r.text and "not a mapping" in r.text
    assert project.syllabus.read_text(encoding="utf-8") == broken


# -- flags ------------------------------------------------------------------------------------


def test_flag_by_filter_states_the_count_then_checks_it(
    client: TestClient, project: ReviewProject
) -> None:
    corpus = project.corpus()
    sections = corpus.filter(pl.col("kind") == "section")
    r = client.get("/flags/confirm", params={"kind": "section", "note": "too chatty"})
    assert f'id="confirm-count">{sections.height}<' in r.text
    form = {"mode": "filter", "kind": "section", "note": "too chatty"}
    r = post(client, "/flags", {**form, "expected": str(sections.height + 1)})
    assert r.status_code == 409 and f"now matches {sections.height}" in r.text
    assert load_flags(project.run_dir) == {}
    r = post(client, "/flags", {**form, "expected": str(sections.height)})
    assert r.status_code == 200
    flags = load_flags(project.run_dir)
    assert set(flags) == set(sections["id"]) and {f.reason for f in flags.values()} == {
        "too chatty"
    }
    page = client.get("/flags").text
    assert all(i in page for i in sections["id"])


def test_flag_one_and_unflag(client: TestClient, project: ReviewProject) -> None:
    doc_id = project.corpus()["id"][0]
    r = post(client, "/flags", {"mode": "one", "id": doc_id, "note": "wrong answer"})
    assert r.status_code == 200 and set(load_flags(project.run_dir)) == {doc_id}
    assert 'id="doc-flag">flagged: wrong answer' in client.get(f"/documents/{doc_id}").text
    topic = project.corpus().filter(pl.col("id") == doc_id)["topic"][0]
    row = re.search(rf'data-id="{topic}">(.*?)</tr>', client.get("/taxonomy").text, re.S)
    assert row and re.findall(r'<td class="n">([^<]*)</td>', row.group(1))[4] == "1"
    r = post(client, "/flags", {"mode": "one", "id": doc_id, "note": ""})
    assert r.status_code == 400  # a reason is required
    rejected_id = project.rejected()["id"][0]
    r = post(client, "/flags", {"mode": "one", "id": rejected_id, "note": "x"})
    assert r.status_code == 400
    r = post(client, "/flags/unflag", {"ids": [doc_id]})
    assert r.status_code == 200 and load_flags(project.run_dir) == {}
    ids = project.corpus()["id"].to_list()[:3]
    for i in ids:
        post(client, "/flags", {"mode": "one", "id": i, "note": "x"})
    assert 'id="flag-total">3<' in client.get("/flags").text
    r = post(client, "/flags/unflag", {"all": "1", "expected": "2"})
    assert r.status_code == 409 and len(load_flags(project.run_dir)) == 3
    r = post(client, "/flags/unflag", {"all": "1", "expected": "3"})
    assert r.status_code == 200 and load_flags(project.run_dir) == {}


def test_flagged_documents_are_dropped_by_the_next_build(project: ReviewProject) -> None:
    client = make_client(project)
    corpus = project.corpus()
    chosen = corpus.filter(pl.col("kind") == "section")["id"].to_list()[:2]
    for doc_id in chosen:
        post(client, "/flags", {"mode": "one", "id": doc_id, "note": "off topic"})
    gen_dir = project.run_dir / "work" / "generate"
    generated = {p.name: p.read_bytes() for p in sorted(gen_dir.glob("part-*.parquet"))}
    assert generated
    with FakeOpenAIServer(responder=responder) as server:
        project.build(server.base_url)
        # Nothing regenerated: the only requests re-ask for the syllabus the test responder
        # always answers wrongly (a failed syllabus is retried by every build).
        prompts = [json.dumps(body["messages"]) for body in server.requests]
        assert all("syllabus" in p.lower() for p in prompts), prompts
    assert {p.name: p.read_bytes() for p in sorted(gen_dir.glob("part-*.parquet"))} == generated
    after = project.corpus()
    assert after.height == corpus.height - 2 and not set(chosen) & set(after["id"])
    curator = project.rejected().filter(pl.col("reason") == "curator")
    assert sorted(curator["id"]) == sorted(chosen)
    assert set(curator["stage"]) == {"review"} and set(curator["detail"]) == {"off topic"}
    assert curator["text"].null_count() == 0  # the whole row is kept for the record
    manifest = json.loads((project.run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["rejected"]["by_stage_reason"]["review"] == {"curator": 2}
    card = (project.run_dir / "README.md").read_text(encoding="utf-8")
    assert "2 of them were flagged by a curator" in card and "| review | curator | 2 |" in card


# -- helpers ----------------------------------------------------------------------------------


def _side(page: str, which: str) -> str:
    match = re.search(rf'id="side-{which}">(.*?)</section>', page, re.S)
    assert match, f"no {which} side"
    return match.group(1)


def _total(page: str, which: str) -> int:
    return int(re.search(r'class="total">([\d,]+)<', _side(page, which)).group(1).replace(",", ""))


def _ids(page: str, which: str) -> list[str]:
    return re.findall(r'<tr class="doc" data-id="([^"]+)"', _side(page, which))


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)
