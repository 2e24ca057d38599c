"""Which kernel isolation the sandbox gets here: network namespace, dropped capabilities.

Probed once per process (and per setting pair) by starting ``python -I -S -B -c pass`` behind
each candidate prefix, strongest first; see ``builder.verify.sandbox`` for what each layer
gives.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from builder.verify.errors import SandboxError


@dataclass(frozen=True)
class Launcher:
    """The command prefix that puts the child into its namespaces, and what it provides."""

    prefix: tuple[str, ...]
    network_namespace: bool
    capabilities_dropped: bool


def _works(prefix: list[str]) -> bool:
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-I", "-S", "-B", "-c", "pass"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


@functools.cache
def detect_launcher(network: str = "auto", drop_capabilities: bool = True) -> Launcher:
    """Probe once which isolation the kernel allows here (cached per argument pair)."""
    unshare = shutil.which("unshare")
    setpriv = shutil.which("setpriv")
    nets: list[list[str]] = []
    if network != "off" and unshare:
        if os.geteuid() == 0:
            nets.append([unshare, "--net", "--"])
        nets.append([unshare, "--net", "--map-root-user", "--"])
    caps: list[list[str]] = []
    if drop_capabilities and setpriv:
        drop = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]
        # --pdeathsig: the child dies with the builder (kill -9 of the builder leaves no orphan)
        caps.append([*drop, "--pdeathsig=KILL", "--"])
        caps.append([*drop, "--"])
    candidates: list[tuple[list[str], bool, bool]] = []
    for net in nets:
        for cap in caps:
            candidates.append((net + cap, True, True))
        candidates.append((net, True, False))
    for cap in caps:
        candidates.append((cap, False, True))
    for prefix, has_net, has_caps in candidates:
        if _works(prefix):
            return Launcher(tuple(prefix), has_net, has_caps)
    if network == "require":
        raise SandboxError(
            "verification needs a network namespace, but `unshare --net` does not work here",
            hint="run as root or enable user namespaces, "
            'or set [verify] network_namespace = "auto"',
        )
    return Launcher((), False, False)
