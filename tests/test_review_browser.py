"""End to end: the real ``corpus review`` process driven by headless Chromium (Playwright,
the system's /usr/bin/chromium; nothing is downloaded). Few tests, each a curator's task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from builder.review.flags import load_flags
from tests.support.fake_openai_server import FakeOpenAIServer
from tests.support.project import responder
from tests.support.review import (  # noqa: F401  (fixtures)
    GROUP,
    PROPOSED_COMMENT,
    ReviewProject,
    ReviewServer,
    add_proposed_nodes,
    built_project_fixture,
    project_fixture,
    review_server_fixture,
    start_review,
    stop_review,
)

pytestmark = [pytest.mark.browser, GROUP]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def test_approve_a_node_and_reject_a_syllabus(
    page: Page, project: ReviewProject, review_server: ReviewServer
) -> None:
    before = project.computing_yaml.read_text(encoding="utf-8")
    page.goto(review_server.url + "proposals")
    page.locator("#node-graphs input[name=ids]").check()
    page.click("#approve-nodes")
    assert "approved graphs" in page.locator("#messages").inner_text()
    after = project.computing_yaml.read_text(encoding="utf-8")
    assert after == before.replace("status: proposed", "status: approved")
    assert f"status: approved  {PROPOSED_COMMENT}" in after  # the comment is kept

    page.click("#back")
    assert page.locator("#node-graphs").count() == 0
    page.locator("#syllabus-programming input[name=ids]").check()
    page.click("#reject-syllabi")
    assert "rejected the syllabus of programming" in page.locator("#messages").inner_text()
    assert not project.syllabus.exists()
    assert (project.syllabus.parent / ".rejected" / project.syllabus.name).exists()


def test_select_all_approves_every_proposed_node_at_once(
    page: Page, project: ReviewProject, review_server: ReviewServer
) -> None:
    add_proposed_nodes(project, ["trees", "heaps"])
    page.goto(review_server.url + "proposals")
    boxes = page.locator("#nodes-form input[name=ids]")
    assert boxes.count() == 3
    page.locator("#nodes-form input.select-all").check()  # the page's script ticks every row
    assert all(boxes.nth(i).is_checked() for i in range(3))
    page.click("#approve-nodes")
    messages = page.locator("#messages").inner_text()
    assert all(f"approved {i}" in messages for i in ("graphs", "trees", "heaps"))
    text = project.computing_yaml.read_text(encoding="utf-8")
    assert "status: proposed" not in text
    assert text.count(f"status: approved  {PROPOSED_COMMENT}") == 3


def test_flag_by_filter_then_build_drops_them(
    page: Page, project: ReviewProject, review_server: ReviewServer
) -> None:
    corpus = project.corpus()
    sections = corpus.filter(
        (pl.col("kind") == "section")
        & pl.col("taxonomy_path").str.starts_with("computing/programming")
    )
    assert sections.height > 0
    page.goto(review_server.url + "documents?node=programming")
    page.select_option("select[name=kind]", "section")
    page.click("#apply-filter")
    assert page.locator("#side-kept .total").inner_text() == str(sections.height)
    page.fill("#flag-filter-reason", "too generic")
    page.click("#flag-filter")
    assert page.locator("#confirm-count").inner_text() == str(sections.height)  # stated first
    assert load_flags(project.run_dir) == {}
    page.click("#confirm-flag")
    assert f"flagged {sections.height} document(s)" in page.locator("#messages").inner_text()
    assert set(load_flags(project.run_dir)) == set(sections["id"])

    with FakeOpenAIServer(responder=responder) as server:
        project.build(server.base_url)
    after = project.corpus()
    assert after.height == corpus.height - sections.height
    assert not set(sections["id"]) & set(after["id"])
    curator = project.rejected().filter(pl.col("reason") == "curator")
    assert sorted(curator["id"]) == sorted(sections["id"])
    card = (project.run_dir / "README.md").read_text(encoding="utf-8")
    assert f"{sections.height} of them were flagged by a curator" in card

    page.goto(review_server.url + "documents?status=rejected&reason=curator")
    assert page.locator("#side-rejected .total").inner_text() == str(sections.height)


def _post_without_csrf(page: Page, url: str) -> Any:
    return page.evaluate(
        """async (url) => {
            const body = new URLSearchParams({action: "approve", ids: "graphs"});
            const r = await fetch(url, {method: "POST", body});
            return r.status;
        }""",
        url,
    )


def _post_with_csrf(page: Page, url: str) -> Any:
    return page.evaluate(
        """async (url) => {
            const token = document.querySelector("meta[name=csrf-token]").content;
            const body = new URLSearchParams({action: "approve", ids: "graphs", csrf_token: token});
            const r = await fetch(url, {method: "POST", body});
            return r.status;
        }""",
        url,
    )


def test_csrf_and_read_only_refuse_writes(
    page: Page, project: ReviewProject, review_server: ReviewServer
) -> None:
    before = project.computing_yaml.read_text(encoding="utf-8")
    page.goto(review_server.url + "proposals")
    assert _post_without_csrf(page, "/proposals/nodes") == 403
    assert project.computing_yaml.read_text(encoding="utf-8") == before

    read_only = start_review(project, "--read-only")
    try:
        page.goto(read_only.url + "proposals")
        assert page.locator("#read-only").is_visible()
        assert page.locator("#approve-nodes").count() == 0  # no write controls
        assert _post_with_csrf(page, "/proposals/nodes") == 403
        assert project.computing_yaml.read_text(encoding="utf-8") == before
    finally:
        stop_review(read_only)
    # The same request with the token is accepted by the writable app: the 403s above were
    # the CSRF check and read-only mode, not a broken request.
    page.goto(review_server.url + "proposals")
    assert _post_with_csrf(page, "/proposals/nodes") == 200
    assert "status: approved" in project.computing_yaml.read_text(encoding="utf-8")
