"""A loopback S3 server that keeps its objects on disk: the durable embedded broker's storage.

tansu 0.6 as shipped here stores topics in memory or in S3 only (its postgres and
sqlite engines are not compiled in). `localbucket` (PyPI, standard library only)
serves a folder as S3, one file per object, written through a temporary file and
an atomic rename: what tansu wrote survives a kill -9 of either process (not a
power cut: it does not fsync). It ignores ``If-Match`` on PUT, which only matters
when two brokers share one bucket; the embedded broker is one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: The bucket tansu's ``s3://`` storage engine writes to (a folder under the data dir).
BUCKET = "tansu"


class ObjectStoreError(RuntimeError):
    """The loopback S3 server could not start or died."""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalObjectStore:
    """A `localbucket` process serving ``data_dir`` as S3 on ``host`` (a free port)."""

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", log_path: Path | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = 0
        self.log_path = log_path or self.data_dir.parent / "object-store.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``http://host:port`` for tansu's ``AWS_ENDPOINT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """The server's exit status once it has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def tansu_env(self) -> dict[str, str]:
        """Environment for tansu's ``s3://`` engine (localbucket checks no credentials)."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "genre",
            "AWS_SECRET_ACCESS_KEY": "genre",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout_s: float = 20.0) -> LocalObjectStore:
        """Start the server (the bucket is a folder: made here) and wait until it listens."""
        if self.running:
            return self
        try:
            import localbucket  # noqa: F401
        except ImportError:
            raise ObjectStoreError(
                "the durable embedded broker needs localbucket: "
                "pip install 'genre-recsys[embedded]'"
            ) from None
        (self.data_dir / BUCKET).mkdir(parents=True, exist_ok=True)
        self.port = _free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "localbucket",
                    *("--host", self.host, "--port", str(self.port)),
                    str(self.data_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise ObjectStoreError(
                    f"the object store (localbucket) exited with code {code} while starting; "
                    f"log {self.log_path}"
                )
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((self.host, self.port)) == 0:
                    return self
            time.sleep(0.02)
        self.stop()
        raise ObjectStoreError(
            f"the object store (localbucket) did not listen on {self.endpoint} within "
            f"{timeout_s:g}s; log {self.log_path}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server, SIGKILL it after *timeout_s*."""
        if self._proc is not None:
            stop_process_group(self._proc, timeout_s)
        self._proc = None


def stop_process_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group *proc* leads, SIGKILL it after *timeout_s*."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
