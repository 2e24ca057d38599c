"""Request-level tests of the review app's guards (Starlette's TestClient): CSRF on every
POST, read-only mode, Host names, the token off loopback, and the command's refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from builder.cli import main
from builder.review.app import TOKEN_COOKIE
from builder.review.flags import load_flags
from tests.support.review import (  # noqa: F401  (fixtures)
    GROUP,
    ReviewProject,
    built_project_fixture,
    client_fixture,
    csrf,
    make_client,
    project_fixture,
)

pytestmark = GROUP


# -- security ---------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused(client: TestClient, project: ReviewProject) -> None:
    before = project.computing_yaml.read_text(encoding="utf-8")
    r = client.post("/proposals/nodes", data={"action": "approve", "ids": ["graphs"]})
    assert r.status_code == 403 and "CSRF" in r.text
    r = client.post(
        "/proposals/nodes", data={"action": "approve", "ids": ["graphs"], "csrf_token": "x"}
    )
    assert r.status_code == 403
    assert project.computing_yaml.read_text(encoding="utf-8") == before
    doc_id = project.corpus()["id"][0]
    r = client.post("/flags", data={"mode": "one", "id": doc_id, "note": "x"})
    assert r.status_code == 403 and load_flags(project.run_dir) == {}


def _post_routes(client: TestClient) -> list[str]:
    """Every POST route of the app, with path parameters filled in with real ids."""
    from starlette.routing import Route

    values = {"node_id": "graphs", "subject_id": "programming", "number": "1"}
    urls = []
    for route in client.app.routes:
        if isinstance(route, Route) and "POST" in (route.methods or ()):
            urls.append(re.sub(r"{(\w+)(?::\w+)?}", lambda m: values[m.group(1)], route.path))
    return urls


def test_every_post_route_checks_the_csrf_token(client: TestClient, project: ReviewProject) -> None:
    urls = _post_routes(client)
    assert len(urls) == 6 and "/proposals/syllabi/programming/sessions/1/edit" in urls
    files = {p: p.read_bytes() for p in [project.computing_yaml, project.syllabus]}
    for url in urls:
        for data in ({}, {"csrf_token": "forged"}):
            r = client.post(url, data={"ids": ["graphs"], "action": "approve", **data})
            assert r.status_code == 403 and "CSRF" in r.text, url
        r = client.post(url, headers={"x-csrf-token": csrf(client)}, data={"title": ""})
        assert r.status_code != 403, url  # the header form of the token is accepted
    assert {p: p.read_bytes() for p in files} == files


def test_read_only_refuses_every_write(project: ReviewProject) -> None:
    client = make_client(project, read_only=True)
    before = project.computing_yaml.read_text(encoding="utf-8")
    token = csrf(client)
    doc_id = project.corpus()["id"][0]
    for url, data in [
        ("/proposals/nodes", {"action": "approve", "ids": ["graphs"]}),
        ("/proposals/nodes/graphs/edit", {"name": "G"}),
        ("/proposals/syllabi", {"action": "reject", "ids": ["programming"]}),
        ("/proposals/syllabi/programming/sessions/1/edit", {"title": "T"}),
        ("/flags", {"mode": "one", "id": doc_id, "note": "x"}),
        ("/flags/unflag", {"ids": [doc_id]}),
    ]:
        r = client.post(url, data={"csrf_token": token, **data})
        assert r.status_code == 403 and "read-only" in r.text, url
    assert project.computing_yaml.read_text(encoding="utf-8") == before
    assert project.syllabus.exists() and load_flags(project.run_dir) == {}
    page = client.get("/proposals").text
    assert 'id="read-only"' in page and 'id="approve-nodes"' not in page
    assert 'id="flag-form"' not in client.get(f"/documents/{doc_id}").text


def test_other_host_names_are_refused(client: TestClient) -> None:
    assert client.get("/taxonomy", headers={"host": "evil.example:8765"}).status_code == 400
    assert client.get("/taxonomy", headers={"host": "localhost:8765"}).status_code == 200


def test_token_is_required_off_loopback(project: ReviewProject) -> None:
    with pytest.raises(ValueError, match="token"):
        make_client(project, host="0.0.0.0")
    client = make_client(project, host="0.0.0.0", token="s3cret")
    assert client.get("/taxonomy").status_code == 401
    assert client.get("/taxonomy", params={"token": "wrong"}).status_code == 401
    r = client.get("/taxonomy", params={"token": "s3cret"})
    assert r.status_code == 200 and r.cookies.get(TOKEN_COOKIE) == "s3cret"
    assert client.get("/documents").status_code == 200  # the cookie carries it now
    fresh = make_client(project, host="0.0.0.0", token="s3cret")
    assert fresh.get("/taxonomy", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert fresh.get("/taxonomy", headers={"host": "0.0.0.0"}).status_code == 401
    # A remote curator reaches the machine by its own name: the token, not the name, decides.
    named = {"host": "review.example:8765"}
    assert fresh.get("/taxonomy", headers=named).status_code == 401
    assert (
        fresh.get("/taxonomy", headers={**named, "authorization": "Bearer s3cret"}).status_code
        == 200
    )


# -- the command ------------------------------------------------------------------------------


def test_cli_refuses_a_public_host_without_token(
    project: ReviewProject, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["review", "--config", str(project.config), "--host", "0.0.0.0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--token" in err[0]


def test_cli_refuses_a_directory_that_is_not_a_run(
    project: ReviewProject, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["review", "--config", str(project.config), "--run", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a built run" in err[0]
