"""Run gridfleet's services as separate local processes (for `make run`, the tests and the benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import httpx

from libs.settings import SERVICES

# Start order: the registry first (others load their caches from it), the gateway last.
START_ORDER = (
    "registry",
    "ingestion",
    "normalisation",
    "aggregation",
    "reporting",
    "command",
    "onboarding",
    "gateway",
)


class ServiceProcesses:
    """A set of service processes sharing one environment; each can be killed and restarted."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, port_base: int) -> None:
        self.env = {**os.environ, **env, "GRIDFLEET_PORT_BASE": str(port_base), "PYTHONUNBUFFERED": "1"}
        self.log_dir = log_dir
        self.port_base = port_base
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port_base + SERVICES.index(service)}"

    def start(self, service: str) -> None:
        log_file = (self.log_dir / f"{service}.log").open("ab")
        self.procs[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()

    def start_all(self, services: Iterable[str] = START_ORDER, timeout: float = 90.0) -> None:
        for service in services:
            self.start(service)
            if service == "registry":
                self.wait_ready(["registry"], timeout)
        self.wait_ready(list(self.procs), timeout)

    def wait_ready(self, services: Iterable[str], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            service = pending[0]
            proc = self.procs[service]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{service} exited with {proc.returncode}; see {self.log_dir / service}.log"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url(service)}/readyz", timeout=2).status_code == 200:
                    pending.pop(0)
                    continue
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{service} not ready after {timeout:.0f} s; see {self.log_dir / service}.log"
                )
            time.sleep(0.2)

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        """Stop a service abruptly (SIGKILL by default): nothing is flushed, nothing acknowledged."""
        proc = self.procs.pop(service)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(15)

    def restart(self, service: str) -> None:
        self.start(service)
        self.wait_ready([service])

    def crashed(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop_all(self, timeout: float = 10.0) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()
