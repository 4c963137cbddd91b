"""The pull API over real HTTP: a ``genre api`` process beside a real worker on the
session broker. Clicks posted through the API reach the user's list fetched through
the API; bad input gets its reason; the token, the rate limit and the size limit hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from genre.client import ApiError, GenreClient
from genre.core.broker import free_port
from genre.process import WorkerProcess
from genre.schemas.openapi import OPENAPI_PATH

from .conftest import Pipeline, click, running_pipeline

pytestmark = [pytest.mark.broker, pytest.mark.model]

TOKEN = "api-test-token"


class ApiProcess(WorkerProcess):
    """``genre api --config <file>``; /ready and /metrics as a worker's."""

    def spawn(self) -> ApiProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "genre", "api", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )
        return self


def start_api(
    pipeline: Pipeline, tmp: Path, name: str, env: dict[str, str] | None = None, **api: Any
) -> ApiProcess:
    """An API process on the pipeline's topics with ``api`` settings, ready."""
    data = yaml.safe_load(pipeline.config_path.read_text())
    port = free_port()
    data["api"].update(api, port=port)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return ApiProcess(path, port, tmp / f"{name}.log", env=env).start(60)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def stack(
    broker: Any, encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pipeline, ApiProcess]]:
    """A worker and an API that requires ``TOKEN`` and takes at most 20 events per POST."""
    tmp = tmp_path_factory.mktemp("api")
    with running_pipeline(tmp, broker.bootstrap, encoder_dir) as pipeline:
        api = start_api(pipeline, tmp, "api", env={"GENRE_API__TOKEN": TOKEN}, max_events=20)
        try:
            yield pipeline, api
        finally:
            api.stop()
            print(f"--- api log tail ---\n{api.log_tail(40)}")


def _client(api: ApiProcess, token: str | None = TOKEN) -> GenreClient:
    return GenreClient(f"http://127.0.0.1:{api.web_port}", token=token)


def _until(fn: Any, timeout_s: float = 60.0) -> Any:
    """Call ``fn`` until it returns a truthy value (ApiError 404 counts as not yet)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except ApiError as exc:
            if exc.status != 404:
                raise
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"not met within {timeout_s}s; last: {last!r}")


def test_click_posted_through_the_api_shows_up_in_the_users_list(
    stack: tuple[Pipeline, ApiProcess],
) -> None:
    _, api = stack
    user = "api-user-1"
    events = [click(f"api-e{i}", user, f"space-{i}", ts=1_700_000_100.0 + i) for i in range(3)]
    with _client(api) as client:
        with pytest.raises(ApiError) as unknown:
            client.recommendations(user)
        assert unknown.value.status == 404 and unknown.value.body.reason == "unknown_user"
        assert client.post_events(events).accepted == ["api-e0", "api-e1", "api-e2"]
        rec = _until(lambda: (r := client.recommendations(user)).trigger_event_id == "api-e2" and r)
        assert rec.user_id == user and rec.arm is None and rec.model_version
        assert rec.items and all(i.reason for i in rec.items)
        assert not {i.item_id for i in rec.items} & {"space-0", "space-1", "space-2"}
        similar = _until(lambda: (s := client.similar("space-1", k=3)).co_click and s)
        assert len(similar.content) == 3 and similar.content[0].score >= similar.content[-1].score
        assert {n.item_id for n in similar.co_click} <= {"space-0", "space-2"}
        assert similar.co_click[0].score > 0


def test_bad_input_gets_its_reason_and_nothing_is_sent(
    stack: tuple[Pipeline, ApiProcess],
) -> None:
    _, api = stack
    good = click("api-bad-0", "api-user-2", "crime-0")
    with _client(api) as client:
        with pytest.raises(ApiError) as refused:
            client.post_events([good, {"event_id": "api-bad-1", "user_id": "u", "ts": 1.7e9}])
        assert refused.value.status == 422
        records = refused.value.body.records or []
        assert [(r.index, r.reason) for r in records] == [(1, "missing_field")]
        with pytest.raises(ApiError) as many:
            client.post_events([good] * 21)
        assert many.value.status == 413 and many.value.body.reason == "too_many_events"
        with pytest.raises(ApiError) as missing:
            client.similar("no-such-item")
        assert missing.value.status == 404
        with pytest.raises(ApiError) as bad_k:
            client.similar("crime-0", k=0)
        assert bad_k.value.status == 400 and bad_k.value.body.reason == "bad_k"
    url = f"http://127.0.0.1:{api.web_port}/v1/events"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    resp = httpx.post(url, content=b"[" + b" " * 1_100_000 + b"]", headers=headers)
    assert resp.status_code == 413 and resp.json()["reason"] == "payload_too_large"
    resp = httpx.post(url, content=b'{"event_id": "x", "event_id": "y"}', headers=headers)
    assert resp.status_code == 422 and resp.json()["records"][0]["reason"] == "invalid_json"


def test_token_is_enforced(stack: tuple[Pipeline, ApiProcess]) -> None:
    _, api = stack
    for token in (None, "wrong"):
        with _client(api, token) as client, pytest.raises(ApiError) as denied:
            client.similar("space-0")
        assert denied.value.status == 401 and "Bearer" in denied.value.body.error
    with _client(api, None) as client:  # the OpenAPI document is open, and committed
        assert client.openapi() == json.loads(OPENAPI_PATH.read_text())


def test_rate_limit_answers_429_with_retry_after(
    stack: tuple[Pipeline, ApiProcess], tmp_path: Path
) -> None:
    pipeline, _ = stack
    # One token per 1,000 s: the third request is refused however slow the machine.
    api = start_api(pipeline, tmp_path, "limited", rate_limit_per_s=0.001, rate_limit_burst=2)
    try:
        with _client(api, None) as client:
            statuses = []
            for _ in range(3):
                try:
                    client.similar("space-0")
                    statuses.append(200)
                except ApiError as exc:
                    statuses.append(exc.status)
                    if exc.status == 429:
                        assert exc.retry_after is not None and int(exc.retry_after) >= 1
            assert statuses == [200, 200, 429]
        assert api.metric("genre_api_requests_total", status="429") == 1
        assert api.metric("genre_api_request_ms_count") >= 3
    finally:
        api.stop()
