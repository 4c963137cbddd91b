"""librdkafka's mock Kafka cluster as a second broker for the integration tests.

librdkafka (bundled in the confluent-kafka wheel) ships a mock cluster behind its
C API (``rd_kafka_mock_cluster_new``): brokers on loopback that speak the Kafka
protocol, with consumer groups, committed offsets and transactions. It is not
Apache Kafka, but it is an independent implementation of the protocol, so a
behaviour that passes on both it and tansu does not hang on one broker's quirks.

What it lacks (librdkafka 2.16, see ``rdkafka_mock_handlers.c``): the admin APIs.
There is no CreateTopics (an AdminClient ``create_topics`` times out "waiting for
controller": Metadata names controller id 0, which is no broker), no DeleteTopics, DescribeConfigs,
DescribeGroups or ListGroups. Topics are created through the mock's own API
(``rd_kafka_mock_topic_create``), which is what ``MockBroker.ensure_topics``
does. Topic configs are not kept, so nothing is compacted.

The cluster runs in a small subprocess (``python -m tests.kafka_mock``) that prints
its bootstrap and then takes commands on stdin, one a line:

    topic <name> <partitions> [<replication>]   create a topic    -> "ok" | "error <why>"
    requests                                    API keys served   -> "requests <key>=<n> ..."
    quit                                        (or EOF) destroy the cluster and exit

Why a subprocess, when the cluster is plain C threads that never take the GIL: the
test process (and its Kafka clients) stays independent of the broker, as with tansu;
a broker can be stopped, frozen (SIGSTOP) or killed like any process; a crash in
this experimental librdkafka API takes down the broker, not the pytest run; and the
broker's log goes to its own file.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from genre.core.config import GenreConfig

__all__ = [
    "MockBroker",
    "MockCluster",
    "faust_topics",
    "librdkafka_path",
    "mock_broker",
]

#: Kafka protocol API keys by number (the ones a client may send).
API_NAMES = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    11: "JoinGroup",
    12: "Heartbeat",
    13: "LeaveGroup",
    14: "SyncGroup",
    15: "DescribeGroups",
    16: "ListGroups",
    18: "ApiVersions",
    19: "CreateTopics",
    20: "DeleteTopics",
    22: "InitProducerId",
    23: "OffsetForLeaderEpoch",
    24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn",
    26: "EndTxn",
    28: "TxnOffsetCommit",
    32: "DescribeConfigs",
    60: "DescribeCluster",
    68: "ConsumerGroupHeartbeat",
    71: "GetTelemetrySubscriptions",
    72: "PushTelemetry",
}

_RD_KAFKA_PRODUCER = 0


def librdkafka_path() -> Path:
    """The librdkafka shared library bundled in the installed confluent-kafka wheel."""
    import confluent_kafka

    package = Path(confluent_kafka.__file__).resolve().parent
    for folder in (package.parent / "confluent_kafka.libs", package / ".libs", package):
        found = sorted(folder.glob("librdkafka*.so*"))
        if found:
            return found[0]
    raise FileNotFoundError(
        f"no librdkafka*.so* next to {package} (confluent-kafka not from a manylinux wheel?)"
    )


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(librdkafka_path()))
    vp, cp, i, i16 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int16
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "rd_kafka_conf_new": (vp, []),
        "rd_kafka_conf_set": (i, [vp, cp, cp, cp, ctypes.c_size_t]),
        "rd_kafka_conf_destroy": (None, [vp]),
        "rd_kafka_new": (vp, [i, vp, cp, ctypes.c_size_t]),
        "rd_kafka_destroy": (None, [vp]),
        "rd_kafka_err2str": (cp, [i]),
        "rd_kafka_mock_cluster_new": (vp, [vp, i]),
        "rd_kafka_mock_cluster_destroy": (None, [vp]),
        "rd_kafka_mock_cluster_bootstraps": (cp, [vp]),
        "rd_kafka_mock_topic_create": (i, [vp, cp, i, i]),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": (None, [vp, ctypes.c_int32]),
        "rd_kafka_mock_start_request_tracking": (None, [vp]),
        "rd_kafka_mock_get_requests": (ctypes.POINTER(vp), [vp, ctypes.POINTER(ctypes.c_size_t)]),
        "rd_kafka_mock_request_api_key": (i16, [vp]),
        "rd_kafka_mock_request_destroy": (None, [vp]),
        "rd_kafka_mock_clear_requests": (None, [vp]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    lib.free.restype = None  # the request array is malloc'ed by librdkafka
    lib.free.argtypes = [vp]
    return lib


class MockCluster:
    """A librdkafka mock cluster in this process (its brokers are librdkafka threads).

    ``rebalance_delay_ms`` is the coordinator's wait for more members before it
    assigns a new group (Kafka's ``group.initial.rebalance.delay.ms``; the mock's
    default, like Kafka's, is 3000 ms).
    """

    def __init__(self, brokers: int = 1, rebalance_delay_ms: int | None = None) -> None:
        self._lib = _load()
        err = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        # The handle only hosts the cluster (its log, its timers): it never connects.
        for key, value in (("log_level", "4"), ("client.id", "genre-kafka-mock")):
            if self._lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), err, 512) != 0:
                self._lib.rd_kafka_conf_destroy(conf)
                raise RuntimeError(f"rd_kafka_conf_set({key}): {err.value.decode()}")
        rk = self._lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, err, 512)  # takes over conf
        if not rk:
            self._lib.rd_kafka_conf_destroy(conf)
            raise RuntimeError(f"rd_kafka_new: {err.value.decode()}")
        self._rk: int | None = rk
        self._mc: int | None = self._lib.rd_kafka_mock_cluster_new(rk, brokers)
        if not self._mc:
            self._lib.rd_kafka_destroy(rk)
            self._rk = None
            raise RuntimeError("rd_kafka_mock_cluster_new failed (see the librdkafka log)")
        if rebalance_delay_ms is not None:
            self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._mc, rebalance_delay_ms)
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()

    def _cluster(self) -> int:
        if self._mc is None:
            raise RuntimeError("the mock cluster is closed")
        return self._mc

    def create_topic(self, name: str, partitions: int, replication: int = 1) -> None:
        """Create ``name`` (an existing topic is left as is)."""
        code = self._lib.rd_kafka_mock_topic_create(
            self._cluster(), name.encode(), partitions, replication
        )
        if code != 0:
            why = self._lib.rd_kafka_err2str(code).decode()
            raise RuntimeError(f"rd_kafka_mock_topic_create({name!r}): {why}")

    def track_requests(self) -> None:
        """Start recording every request the brokers serve (see ``requests``)."""
        self._lib.rd_kafka_mock_start_request_tracking(self._cluster())

    def requests(self) -> Counter[int]:
        """Requests served since tracking started, by API key; clears the record."""
        count = ctypes.c_size_t(0)
        array = self._lib.rd_kafka_mock_get_requests(self._cluster(), ctypes.byref(count))
        keys: Counter[int] = Counter()
        if array:
            for n in range(count.value):
                keys[int(self._lib.rd_kafka_mock_request_api_key(array[n]))] += 1
                self._lib.rd_kafka_mock_request_destroy(array[n])
            self._lib.free(ctypes.cast(array, ctypes.c_void_p))
        self._lib.rd_kafka_mock_clear_requests(self._cluster())
        return keys

    def close(self) -> None:
        """Destroy the cluster (its listeners close), then its host handle."""
        if self._mc is not None:
            self._lib.rd_kafka_mock_cluster_destroy(self._mc)
            self._mc = None
        if self._rk is not None:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(brokers: int, rebalance_delay_ms: int | None, track: bool) -> int:
    """Run a cluster; print its bootstrap; answer stdin commands until EOF or ``quit``."""
    with MockCluster(brokers, rebalance_delay_ms) as cluster:
        if track:
            cluster.track_requests()
        print(f"bootstrap {cluster.bootstrap}", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            try:
                if words[0] == "topic" and len(words) in (3, 4):
                    replication = int(words[3]) if len(words) == 4 else 1
                    cluster.create_topic(words[1], int(words[2]), replication)
                    reply = "ok"
                elif words[0] == "requests":
                    seen = cluster.requests()
                    reply = "requests " + " ".join(f"{k}={n}" for k, n in sorted(seen.items()))
                elif words[0] == "quit":
                    break
                else:
                    reply = f"error unknown command {line.strip()!r}"
            except Exception as exc:
                reply = f"error {exc}".replace("\n", " ")
            print(reply, flush=True)
    return 0


def faust_topics(config: GenreConfig) -> dict[str, int]:
    """The topics (name -> partitions) a worker of role ``all`` creates on its own
    at start: its tables' changelogs (``streams.app.build_streams``), Faust's
    leader-assignor topic and the state marker (``core.state_guard``)."""
    from genre.core.state_guard import marker_topic

    app_id, t = config.app_id, config.kafka.topics
    tables = {
        "user-state": t.user_clicks.partitions,
        "latest-lists": t.user_clicks.partitions,
        "user-profiles": t.user_clicks.partitions,
        "item-graph": t.co_clicks.partitions,
    }
    topics = {f"{app_id}-{name}-changelog": n for name, n in tables.items()}
    topics[f"{app_id}-__assignor-__leader"] = 1
    topics[marker_topic(app_id)] = 1
    return topics


class MockBroker:
    """A mock cluster in a child process (``python -m tests.kafka_mock``).

    Offers what the tests use of ``EmbeddedBroker``: ``bootstrap``, ``pid``,
    ``start``/``stop``, plus ``ensure_topics`` in place of CreateTopics.
    Everything lives in memory: a stopped broker's topics, records and offsets
    are gone.
    """

    def __init__(
        self,
        brokers: int = 1,
        log_path: Path | None = None,
        rebalance_delay_ms: int | None = None,
        track_requests: bool = True,
    ) -> None:
        self.brokers = brokers
        self.log_path = log_path
        self.rebalance_delay_ms = rebalance_delay_ms
        self.track_requests = track_requests
        self.bootstrap = ""
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._api_keys: Counter[int] = Counter()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> MockBroker:
        """Spawn the child and wait for its bootstrap line."""
        if self.running:
            return self
        args = [sys.executable, "-m", "tests.kafka_mock", "--brokers", str(self.brokers)]
        if self.rebalance_delay_ms is not None:
            args += ["--rebalance-delay-ms", str(self.rebalance_delay_ms)]
        if self.track_requests:
            args.append("--track-requests")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                cwd=Path(__file__).resolve().parents[1],
                start_new_session=True,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        line = self._reply(timeout_s)
        if not line.startswith("bootstrap "):
            self.stop()
            raise RuntimeError(f"the mock broker did not start: {line!r}")
        self.bootstrap = line.split()[1]
        return self

    def _reply(self, timeout_s: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self._proc.stdout.readline()))  # type: ignore[union-attr]
        reader.daemon = True
        reader.start()
        reader.join(timeout_s)
        if not result or not result[0]:
            code = self._proc.poll()
            raise RuntimeError(
                f"no answer from the mock broker within {timeout_s:g}s (exit code {code})"
            )
        return result[0].strip()

    def command(self, line: str, timeout_s: float = 10.0) -> str:
        """Send one command line to the child and return its answer."""
        with self._lock:
            if not self.running:
                raise RuntimeError("the mock broker is not running")
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            reply = self._reply(timeout_s)
        if reply.startswith("error"):
            raise RuntimeError(f"mock broker: {line!r}: {reply}")
        return reply

    def create_topic(self, name: str, partitions: int, replication: int = 1) -> None:
        if len(name.split()) != 1:
            raise ValueError(f"topic names with blanks are not supported here: {name!r}")
        self.command(f"topic {name} {partitions} {replication}")

    def ensure_topics(self, topics: dict[str, int], compacted: Iterable[str] = ()) -> None:
        """Create ``topics`` (name -> partitions), as ``core.broker.ensure_topics`` would.

        The mock keeps no topic configs: ``compacted`` topics are created as plain ones.
        """
        for name, partitions in topics.items():
            self.create_topic(name, partitions)

    def create_genre_topics(self, config: GenreConfig) -> None:
        """Every topic a worker of role ``all`` needs: ``kafka.topics`` and the ones
        Faust and the worker would create themselves (see ``faust_topics``)."""
        self.ensure_topics({**config.kafka.topics.all(), **faust_topics(config)})

    def api_keys(self) -> Counter[str]:
        """Requests served since the last call, by API name (needs ``track_requests``)."""
        reply = self.command("requests")
        seen: Counter[str] = Counter()
        for word in reply.split()[1:]:
            key, n = word.split("=")
            seen[API_NAMES.get(int(key), f"ApiKey{key}")] += int(n)
        return seen

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the child to quit (closing its stdin); kill it if it does not."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdout is not None
            proc.stdout.close()

    def __enter__(self) -> MockBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MockBroker({self.bootstrap or '-'}, pid={self.pid})"


@pytest.fixture(scope="session")
def mock_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockBroker]:
    """A started librdkafka mock cluster (one broker) shared by the session.

    Import it into a test module (``from tests.kafka_mock import mock_broker``).
    """
    log = tmp_path_factory.mktemp("kafka-mock") / "mock.log"
    broker = MockBroker(log_path=log)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kafka_mock", description="Run a librdkafka mock Kafka cluster."
    )
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--rebalance-delay-ms", type=int, default=None)
    parser.add_argument("--track-requests", action="store_true")
    args = parser.parse_args(argv)
    return serve(args.brokers, args.rebalance_delay_ms, args.track_requests)


if __name__ == "__main__":
    sys.exit(main())
