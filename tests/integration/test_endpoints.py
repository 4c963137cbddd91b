"""What a worker's web port serves to a client on another host.

The worker binds 0.0.0.0 (as in docker-compose.yml); the client runs in a network
namespace made for the test, joined to the host by a veth pair, so the worker sees a
non-loopback address. Only /metrics and /ready are open; Faust's table and router
views are off; /debug/* needs the bearer token.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Pipeline, click, running_pipeline

TOKEN = "debug-s3cret"

FETCH = """
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers=dict(h.split(": ", 1) for h in sys.argv[2:]))
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read(2_000_000).decode(errors="replace"))
except urllib.error.HTTPError as e:
    print(e.code, e.read(2_000_000).decode(errors="replace"))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def other_host() -> Iterator[tuple[str, str]]:
    """A network namespace linked to this host: (namespace, this host's address in it)."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed; apt-get install iproute2")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, peer_if = f"genre-{tag}", f"gh{tag}", f"gp{tag}"
    octet = int(tag[:2], 16) % 200 + 20
    host_ip, peer_ip = f"10.{octet}.7.1", f"10.{octet}.7.2"
    try:
        _ip("netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here ({exc.stderr.strip()})")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", peer_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{peer_ip}/30", "dev", peer_if)
        _ip("netns", "exec", ns, "ip", "link", "set", peer_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _get(ns: str | None, url: str, *headers: str) -> tuple[int, str]:
    cmd = [sys.executable, "-c", FETCH, url, *headers]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    status, _, body = out.strip().partition(" ")
    return int(status), body


@pytest.fixture
def public_worker(broker: Any, encoder_dir: Path, tmp_path: Path) -> Iterator[Pipeline]:
    streams = {"web_bind": "0.0.0.0", "debug_token": TOKEN}
    with running_pipeline(tmp_path, broker.bootstrap, encoder_dir, streams=streams) as p:
        yield p


def test_only_metrics_and_ready_are_served_to_another_host(
    other_host: tuple[str, str], public_worker: Pipeline
) -> None:
    ns, host_ip = other_host
    p = public_worker
    p.send_clicks([click("ep-1", "ep-user", "space-1")])
    p.recommendations(until_triggers={"ep-1"})
    base = f"http://{host_ip}:{p.worker.web_port}"

    status, body = _get(ns, f"{base}/metrics")
    assert status == 200 and "genre_events_in_total" in body
    assert _get(ns, f"{base}/ready")[0] in (200, 503)
    # Faust's views of the tables and the router would hand out user data: gone.
    for path in (
        "/table/user-state/ep-user/",
        "/table/user-profiles/ep-user/",
        "/table/latest-lists/ep-user/",
        "/table/item-graph/space-1/",
        "/router/",
        "/graph/",
        "/stats/",
    ):
        assert _get(ns, base + path)[0] == 404, path
    # Debug pages: the token opens them to another host; nothing else does.
    status, body = _get(ns, f"{base}/debug/memory")
    assert status == 403 and "streams.debug_token" in body
    assert _get(ns, f"{base}/debug/memory", "Authorization: Bearer wrong")[0] == 403
    status, body = _get(ns, f"{base}/debug/memory", f"Authorization: Bearer {TOKEN}")
    assert status == 200 and "rss_mb" in json.loads(body)
    # On the host itself (loopback) debug pages need no token.
    assert _get(None, f"http://127.0.0.1:{p.worker.web_port}/debug/memory")[0] == 200
