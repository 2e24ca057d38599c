"""The suite's own guards: no network beyond loopback, no silent skips, prerequisites named."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.support.netguard import NetworkBlocked, is_loopback
from tests.support.prerequisites import missing_prerequisites

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["pytester"]


def test_connections_outside_loopback_are_refused() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(NetworkBlocked, match="93.184.216.34"):
            sock.connect(("93.184.216.34", 443))
    finally:
        sock.close()
    with pytest.raises(NetworkBlocked, match="example.com"):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("10.0.0.1", 80), timeout=1)


def test_loopback_still_works() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        with socket.create_connection(("localhost", port), timeout=5) as client:
            conn, _ = server.accept()
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.close()
    finally:
        server.close()


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True), (None, True),
     ("8.8.8.8", False), ("192.168.1.5", False), ("pypi.org", False), (b"127.0.0.1", True)],
)  # fmt: skip
def test_is_loopback(host: object, local: bool) -> None:
    assert is_loopback(host) is local


def test_this_machine_has_every_prerequisite() -> None:
    assert missing_prerequisites() == []


def test_a_skip_is_reported_as_a_failure(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401\n")
    pytester.makepyfile(
        """
        import pytest

        def test_skips():
            pytest.skip("no chromium")

        @pytest.mark.xfail(reason="known")
        def test_xfails():
            assert False

        def test_passes():
            assert True
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped under the strict suite*no chromium*"])


def test_tests_sharing_a_module_fixture_run_on_one_worker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `make test`'s options, tests sharing a module-scoped fixture stay on one worker
    (the fixture is made once) while tests sharing none spread over both workers."""
    # The sub-run's conftest imports this suite's: ``tests`` must be importable there too.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    pytester.makeconftest("from tests.conftest import *  # noqa: F403\n")
    pytester.makepyfile(
        test_groups="""
        import os
        import pytest

        @pytest.fixture(scope="module")
        def made(tmp_path_factory):
            log = tmp_path_factory.getbasetemp().parent / "made.log"
            with open(log, "a") as f:
                f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

        @pytest.mark.parametrize("i", range(6))
        def test_shared(made, i):
            pass

        @pytest.mark.parametrize("i", range(6))
        def test_alone(i):
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=12)
    ran = {}
    for line in result.outlines:
        if "PASSED" in line and line.startswith("[gw"):
            ran[line.split()[-1]] = line.split("]")[0].lstrip("[")
    shared = {w for test, w in ran.items() if "test_shared" in test}
    assert len(shared) == 1  # one worker ran every test of the group
    assert set(ran.values()) == {"gw0", "gw1"}  # the others spread
    logs = list(pytester.path.parent.glob("**/made.log"))
    assert [p.read_text().split() for p in logs] == [sorted(shared)]  # made once
