"""The pull API's pure parts and its HTTP app in process (no broker; see
tests/integration/test_api.py for the real worker and broker)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from genre.core.broker import free_port
from genre.core.config import ApiConfig, GenreConfig
from genre.core.features import FeatureSpec, encode_vector
from genre.schemas import ClickEvent, CoClicks, ItemVector, Recommendation, RecommendedItem
from genre.schemas.api import UserRecommendations, split_events
from genre.schemas.openapi import OPENAPI_PATH, openapi_text
from genre.schemas.validation import Rejection, parse_record
from genre.workers.api_events import EventSender, Refused, parse_events
from genre.workers.api_http import ApiState, build_app
from genre.workers.api_limits import RateLimiter, bearer_ok, retry_after
from genre.workers.api_views import CoClickGraph, ContentIndex, LatestLists, similar_body

EVENT = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000.0}


def _raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


# --------------------------------------------------------------------------- bodies


def test_split_events_single_object_is_the_body_itself() -> None:
    body = b' {"event_id": "e1"} '
    assert split_events(body) == [body]


def test_split_events_cuts_array_elements_as_sent() -> None:
    a, b = b'{"a": 1,  "a": 2}', b'{"x": NaN}'
    assert split_events(b"[ " + a + b" ,\n" + b + b" ]") == [a, b]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty_payload"),
        (b"  ", "empty_payload"),
        (b"[]", "empty_payload"),
        (b"[{}", "invalid_json"),
        (b"[{} {}]", "invalid_json"),
        (b"[{}] x", "invalid_json"),
        (b"\xff", "invalid_json"),
    ],
)
def test_split_events_refusals(body: bytes, reason: str) -> None:
    out = split_events(body)
    assert isinstance(out, Rejection) and out.reason == reason


def test_parse_events_gives_ingest_reasons_per_record() -> None:
    """Each element gets exactly the reason ``parse_record`` (the fold's validation) gives."""
    bad = [
        b'{"event_id": "e2", "user_id": "u1", "ts": 1700000000}',  # missing item_id
        b'{"event_id": "e3", "user_id": "u1", "user_id": "u2", "item_id": "i", "ts": 1.7e9}',
        b'{"event_id": " e4", "user_id": "u1", "item_id": "i", "ts": 1700000000}',
        b"[1]",
    ]
    body = b"[" + b",".join([_raw(EVENT), *bad]) + b"]"
    refused = parse_events(body, max_events=10)
    assert isinstance(refused, Refused) and refused.status == 422
    expected = []
    for payload in bad:
        rejection = parse_record(ClickEvent, payload)
        assert isinstance(rejection, Rejection)
        expected.append(rejection.reason)
    assert [r.reason for r in refused.records] == expected
    assert expected == ["missing_field", "invalid_json", "invalid_value", "not_an_object"]
    assert [r.index for r in refused.records] == [1, 2, 3, 4]


def test_parse_events_limits_and_success() -> None:
    many = b"[" + b",".join([_raw(EVENT)] * 3) + b"]"
    refused = parse_events(many, max_events=2)
    assert isinstance(refused, Refused) and refused.status == 413
    clicks = parse_events(many, max_events=3)
    assert isinstance(clicks, list) and [c.event_id for c in clicks] == ["e1"] * 3
    not_json = parse_events(b"{nope", max_events=3)
    assert isinstance(not_json, Refused)
    assert not_json.status == 422 and not_json.records[0].reason == "invalid_json"
    bad_array = parse_events(b"[{}", max_events=3)
    assert isinstance(bad_array, Refused) and bad_array.status == 400


# --------------------------------------------------------------------------- guards


def test_rate_limiter_bucket() -> None:
    limiter = RateLimiter(rate=2.0, burst=2)
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == pytest.approx(0.5)
    assert limiter.take("b", 0.0) == 0.0  # per client
    assert limiter.take("a", 0.5) == 0.0  # refilled one token
    assert RateLimiter(rate=0, burst=1).take("a", 0.0) == 0.0  # off


def test_rate_limiter_forgets_idle_clients() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2)
    limiter.take("a", 0.0)
    limiter.take("b", 0.0)
    limiter.take("c", 10.0)  # a and b have refilled: forgotten
    assert set(limiter._buckets) == {"c"}


def test_retry_after_and_bearer() -> None:
    assert retry_after(0.01) == "1" and retry_after(2.2) == "3"
    assert bearer_ok("Bearer s3cret", "s3cret")
    assert not bearer_ok("Bearer s3cre", "s3cret")
    assert not bearer_ok(None, "s3cret")


# --------------------------------------------------------------------------- views


def _vector(item_id: str, values: list[float], title: str = "") -> ItemVector:
    return ItemVector(
        item_id=item_id,
        vector=encode_vector(np.asarray(values, np.float32)),
        payload={"title": title},
    )


def test_content_index_nearest_and_delete() -> None:
    index = ContentIndex(dim=2)
    for i in range(70):  # past the first growth
        assert index.apply(_vector(f"x{i}", [1.0, i / 100])) is None
    index.apply(_vector("a", [1.0, 0.0], "A"))
    index.apply(_vector("b", [0.0, 1.0], "B"))
    top = index.nearest("a", 3)
    assert [n.item_id for n in top] == ["x0", "x1", "x2"]
    assert top[0].score == pytest.approx(1.0)
    index.delete("x0")
    assert "x0" not in [n.item_id for n in index.nearest("a", 3)]
    assert index.apply(_vector("bad", [1.0, 2.0, 3.0])) is not None


def test_co_click_graph_uses_the_graph_rules() -> None:
    rules = FeatureSpec.from_streams(GenreConfig().streams).graph_rules()
    graph = CoClickGraph(rules)
    graph.apply(CoClicks.encode([("a", ["b", "c"], 1.0, 100.0), ("b", ["a"], 0.0, 100.0)]))
    graph.apply(CoClicks.encode([("a", ["b"], 1.0, 200.0)]))
    index = ContentIndex(dim=2)
    index.apply(_vector("b", [1.0, 0.0], "Bee"))
    top = graph.neighbours("a", 5, index)
    assert [n.item_id for n in top] == ["b", "c"]
    assert top[0].title == "Bee" and top[0].score > top[1].score
    assert similar_body("zzz", 5, index, graph) is None
    body = json.loads(similar_body("a", 1, index, graph) or b"")
    assert body["co_click"][0]["item_id"] == "b" and body["content"] == []


def _rec(user: str, at: float, trigger: str) -> Recommendation:
    return Recommendation(
        user_id=user,
        items=[RecommendedItem(item_id="i", score=0.5, source="ann", reason="r")],
        model_version="v",
        trigger_event_id=trigger,
        generated_at=at,
        latency_ms=1.0,
    )


def test_latest_lists_keep_the_newest() -> None:
    lists = LatestLists()
    lists.apply(_rec("u", 2.0, "new"))
    lists.apply(_rec("u", 1.0, "old"))
    body = UserRecommendations.model_validate_json(lists.body("u") or b"")
    assert body.trigger_event_id == "new" and body.arm is None
    assert lists.body("nobody") is None


def test_committed_openapi_is_current() -> None:
    regen = 'python -c "from genre.schemas.openapi import write_openapi; write_openapi()"'
    assert OPENAPI_PATH.read_text() == openapi_text(), f"stale {OPENAPI_PATH}; run {regen}"


# --------------------------------------------------------------------------- the app


def _serve(api: ApiConfig, sender: EventSender | None = None) -> Callable[..., Any]:
    state = ApiState(
        api,
        LatestLists(),
        ContentIndex(2),
        CoClickGraph(FeatureSpec.from_streams(GenreConfig().streams).graph_rules()),
        None,
        sender,
    )
    state.lists.apply(_rec("u1", 1.0, "t1"))

    def run(body: Callable[[TestClient], Awaitable[None]]) -> None:
        async def main() -> None:
            async with TestClient(TestServer(build_app(state))) as client:
                await body(client)

        asyncio.run(main())

    return run


def test_app_token_rate_limit_and_errors() -> None:
    api = ApiConfig(token="s3cret", rate_limit_per_s=0.001, rate_limit_burst=3)
    auth = {"Authorization": "Bearer s3cret"}

    async def body(client: TestClient) -> None:
        resp = await client.get("/v1/users/u1/recommendations")
        assert resp.status == 401 and "Bearer" in (await resp.json())["error"]
        resp = await client.get("/v1/users/u1/recommendations", headers=auth)
        assert resp.status == 200 and (await resp.json())["trigger_event_id"] == "t1"
        resp = await client.get("/v1/users/nobody/recommendations", headers=auth)
        assert resp.status == 404 and (await resp.json())["reason"] == "unknown_user"
        resp = await client.get("/v1/items/x/similar?k=zero", headers=auth)
        assert resp.status == 429 and resp.headers["Retry-After"].isdigit()
        resp = await client.get("/v1/openapi.json")  # open: no token, no limit
        assert resp.status == 200 and (await resp.json())["openapi"] == "3.1.0"
        metrics = await (await client.get("/metrics")).text()
        assert (
            'genre_api_requests_total{route="/v1/users/{user_id}/recommendations",status="401"}'
            in metrics
        )

    _serve(api)(body)


def test_app_bad_k_unknown_item_and_size_limits() -> None:
    api = ApiConfig(max_events=2, max_body_bytes=1024, max_k=5)

    async def body(client: TestClient) -> None:
        for k in ("0", "6", "x"):
            resp = await client.get(f"/v1/items/a/similar?k={k}")
            assert resp.status == 400 and (await resp.json())["reason"] == "bad_k"
        resp = await client.get("/v1/items/a/similar?k=5")
        assert resp.status == 404 and (await resp.json())["reason"] == "unknown_item"
        resp = await client.post("/v1/events", data=b"[" + b"1," * 600 + b"1]")
        assert resp.status == 413 and (await resp.json())["reason"] == "payload_too_large"
        resp = await client.post("/v1/events", data=b"[" + b",".join([_raw(EVENT)] * 3) + b"]")
        assert resp.status == 413 and (await resp.json())["reason"] == "too_many_events"
        resp = await client.post("/v1/events", data=b'[{"event_id": "e"}]')
        answer = await resp.json()
        assert resp.status == 422 and answer["records"][0]["reason"] == "missing_field"

    _serve(api)(body)


def test_broker_away_answers_503_naming_the_ids() -> None:
    """A real producer against a port nobody listens on: after the delivery budget the
    API answers 503 and names every id the broker did not acknowledge."""
    config = GenreConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
            "api": {"delivery_timeout_s": 1.0},
        }
    )
    sender = EventSender(config)
    events = [dict(EVENT, event_id=f"e{i}") for i in range(2)]

    async def body(client: TestClient) -> None:
        resp = await client.post("/v1/events", data=json.dumps(events).encode())
        answer = await resp.json()
        assert resp.status == 503, answer
        assert answer["not_accepted"] == ["e0", "e1"] and answer["accepted"] == []
        assert answer["reason"] == "broker_unavailable"

    try:
        _serve(config.api, sender)(body)
    finally:
        sender.close(0.1)


def test_empty_token_means_no_token() -> None:
    """``GENRE_API__TOKEN=`` (compose passes an unset GENRE_API_TOKEN as empty) leaves it open."""

    async def body(client: TestClient) -> None:
        resp = await client.get("/v1/users/u1/recommendations")
        assert resp.status == 200

    _serve(ApiConfig(token=""))(body)
