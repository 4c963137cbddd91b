"""Run ``genre worker`` as a child process and watch it through its HTTP endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


class WorkerProcessError(RuntimeError):
    """The worker process died or did not become ready; the message carries its log tail."""


class WorkerProcess:
    """A ``genre worker --config <file> --role <role>`` child process with its /ready and
    /metrics pages."""

    def __init__(
        self,
        config_path: Path,
        web_port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        role: str = "all",
    ) -> None:
        self.config_path = config_path
        #: What the child runs (``genre worker --role``).
        self.role = role
        self.web_port = web_port
        self.log_path = log_path
        #: Extra environment for the child (secrets travel here, never in the config file).
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready_timeout_s: float = 120.0) -> WorkerProcess:
        """Spawn the worker and wait until /ready answers 200."""
        self.spawn()
        self.wait_ready(ready_timeout_s)
        return self

    def spawn(self) -> WorkerProcess:
        """Start the child process without waiting for it (see ``wait_ready``)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "genre", "worker"),
                    *("--config", str(self.config_path), "--role", self.role),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Block until /ready answers 200; raise with the log tail if the worker dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise WorkerProcessError(f"worker exited with {code}; log:\n{self.log_tail()}")
            try:
                url = f"http://127.0.0.1:{self.web_port}/ready"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise WorkerProcessError(
            f"worker not ready within {timeout_s:.0f}s; log:\n{self.log_tail()}"
        )

    def metrics_text(self) -> str:
        """The raw Prometheus text of the worker's /metrics page."""
        url = f"http://127.0.0.1:{self.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    def memory_report(self, top: int = 25, timeout_s: float = 120.0) -> dict:
        """The worker's ``/debug/memory`` report (allocation sites under PYTHONTRACEMALLOC)."""
        url = f"http://127.0.0.1:{self.web_port}/debug/memory?top={top}"
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(self.metrics_text())
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def wait_metric(self, name: str, at_least: float, timeout_s: float, **labels: str) -> float:
        """Poll until ``metric(name) >= at_least``; raises on timeout or worker death."""
        deadline = time.monotonic() + timeout_s
        value = 0.0
        while time.monotonic() < deadline:
            if not self.running:
                raise WorkerProcessError(f"worker died; log:\n{self.log_tail()}")
            value = self.metric(name, **labels)
            if value >= at_least:
                return value
            time.sleep(0.2)
        raise WorkerProcessError(
            f"{name}{labels or ''} reached {value}, not {at_least}, within {timeout_s:.0f}s"
        )

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """Ask the worker to stop (SIGINT, as Ctrl-C) and wait; kill it if it hangs."""
        if self.proc is None:
            return None
        if self.running:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the worker: no clean shutdown, no final commit."""
        if self.proc is not None and self.running:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the worker's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"
