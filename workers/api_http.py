"""The pull API's HTTP server (aiohttp): routes, bearer token, rate limit, metrics.

Routes (docs/api.md; the OpenAPI document is ``genre.schemas.openapi``):

* ``GET /v1/users/{user_id}/recommendations``: the user's latest list.
* ``GET /v1/items/{item_id}/similar?k=``: content and co-click neighbours.
* ``POST /v1/events``: clicks, validated as ingest does, produced keyed by user.
* ``GET /v1/openapi.json``, ``GET /metrics``, ``GET /ready``: open, no token, no limit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from genre.core.config import ApiConfig
from genre.core.telemetry import METRICS, render
from genre.schemas.api import ErrorBody, EventsAccepted
from genre.schemas.openapi import openapi_text
from genre.workers.api_events import EventSender, Refused, parse_events
from genre.workers.api_follower import ApiFollower
from genre.workers.api_limits import RateLimiter, bearer_ok, retry_after
from genre.workers.api_views import CoClickGraph, ContentIndex, LatestLists, similar_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes served to anyone: no token, no rate limit.
OPEN_PATHS = frozenset({"/v1/openapi.json", "/metrics", "/ready"})
DEFAULT_K = 10


@dataclass
class ApiState:
    """Everything the handlers read: the config, the views, the follower and the sender."""

    api: ApiConfig
    lists: LatestLists
    index: ContentIndex
    graph: CoClickGraph
    follower: ApiFollower | None
    sender: EventSender | None


def error(status: int, message: str, **fields: Any) -> web.Response:
    """A JSON error answer (``ErrorBody``)."""
    body = ErrorBody(error=message, **fields).model_dump_json(exclude_none=True)
    return web.Response(status=status, body=body.encode(), content_type="application/json")


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "other"


@web.middleware
async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route and status and time it; unexpected errors become a 500."""
    start = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = error(exc.status, exc.reason or "request refused")
    except Exception as exc:  # an answer, not a dropped connection
        response = error(500, f"internal error: {type(exc).__name__}: {exc}")
    route = _route(request)
    METRICS.api_requests.labels(route, str(response.status)).inc()
    METRICS.api_request_ms.labels(route).observe((time.perf_counter() - start) * 1000.0)
    return response


def guards(api: ApiConfig) -> Any:
    """The middleware that enforces ``api.token`` and the per-IP rate limit on /v1 routes."""
    limiter = RateLimiter(api.rate_limit_per_s, api.rate_limit_burst)
    # An empty token (``GENRE_API__TOKEN=``, as compose passes an unset variable) is none.
    token = (api.token.get_secret_value() if api.token is not None else "") or None

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        wait = limiter.take(request.remote or "unknown", time.monotonic())
        if wait > 0:
            response = error(
                429,
                f"over the rate limit of {api.rate_limit_per_s:g} requests/s per client "
                f"(api.rate_limit_per_s, burst {api.rate_limit_burst}); retry after "
                f"{wait:.3f}s",
                reason="rate_limited",
            )
            response.headers["Retry-After"] = retry_after(wait)
            return response
        if token is not None and not bearer_ok(request.headers.get("Authorization"), token):
            response = error(
                401,
                "this API requires Authorization: Bearer <api.token>; the request "
                "carries no token or a different one",
                reason="unauthorized",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="genre"'
            return response
        return await handler(request)

    return guard


async def recommendations(request: web.Request) -> web.StreamResponse:
    """GET /v1/users/{user_id}/recommendations."""
    state: ApiState = request.app[STATE]
    user_id = request.match_info["user_id"]
    body = state.lists.body(user_id)
    if body is None:
        return error(
            404,
            f"no recommendations for user {user_id!r}: no list was published for this user "
            "id (check the id; a new user gets a list after their first click is scored)",
            reason="unknown_user",
        )
    return _json(body)


async def similar(request: web.Request) -> web.StreamResponse:
    """GET /v1/items/{item_id}/similar?k=."""
    state: ApiState = request.app[STATE]
    item_id = request.match_info["item_id"]
    raw = request.query.get("k", str(DEFAULT_K))
    max_k = state.api.max_k
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if not 1 <= k <= max_k:
        return error(400, f"k={raw!r} is not an integer in 1..{max_k} (api.max_k)", reason="bad_k")
    body = similar_body(item_id, k, state.index, state.graph)
    if body is None:
        return error(
            404,
            f"unknown item {item_id!r}: it has no vector on the item-vectors topic and no "
            "co-clicks (check the id; send it as an ItemUpsert to add it)",
            reason="unknown_item",
        )
    return _json(body)


async def post_events(request: web.Request) -> web.StreamResponse:
    """POST /v1/events: one ClickEvent or an array of them."""
    state: ApiState = request.app[STATE]
    limit = state.api.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _too_large(request.content_length, limit)
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        return _too_large(None, limit)
    parsed = parse_events(body, state.api.max_events)
    if isinstance(parsed, Refused):
        invalid = len(parsed.records) if parsed.records else 1
        METRICS.api_events.labels("invalid").inc(invalid)
        return error(
            parsed.status,
            parsed.error,
            reason=parsed.reason,
            records=list(parsed.records) or None,
        )
    assert state.sender is not None, "the API runs without a producer"
    delivery = await state.sender.send(parsed)
    METRICS.api_events.labels("accepted").inc(len(delivery.accepted))
    if delivery.not_accepted:
        METRICS.api_events.labels("not_accepted").inc(len(delivery.not_accepted))
        return error(
            503,
            f"the broker did not acknowledge {len(delivery.not_accepted)} of {len(parsed)} "
            f"events within {state.api.delivery_timeout_s:g}s ({delivery.error}); send the "
            "not_accepted ids again (re-sent event ids count once)",
            reason="broker_unavailable",
            accepted=delivery.accepted,
            not_accepted=delivery.not_accepted,
        )
    return _json(EventsAccepted(accepted=delivery.accepted).model_dump_json().encode(), 202)


def _too_large(length: int | None, limit: int) -> web.Response:
    size = f"{length} bytes" if length is not None else "more bytes"
    return error(
        413,
        f"the body has {size} than the {limit}-byte limit (api.max_body_bytes); split the batch",
        reason="payload_too_large",
    )


async def openapi(request: web.Request) -> web.StreamResponse:
    """GET /v1/openapi.json."""
    return _json(request.app[OPENAPI])


async def metrics(request: web.Request) -> web.StreamResponse:
    """GET /metrics (Prometheus)."""
    body, content_type = render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def ready(request: web.Request) -> web.StreamResponse:
    """GET /ready: 200 once every topic was read to its end once, else 503 with why."""
    state: ApiState = request.app[STATE]
    follower = state.follower
    caught_up = follower is not None and follower.ready.is_set() and follower.error is None
    body: dict[str, Any] = {
        "ready": caught_up,
        "users": len(state.lists),
        "items": len(state.index),
        "graph_items": len(state.graph),
    }
    if follower is not None and follower.error is not None:
        body["error"] = f"stopped following the topics: {follower.error}"
    return _json(orjson.dumps(body), 200 if caught_up else 503)


STATE = web.AppKey("state", ApiState)
OPENAPI = web.AppKey("openapi", bytes)


def build_app(state: ApiState) -> web.Application:
    """The aiohttp application over ``state``."""
    app = web.Application(
        middlewares=[measured, guards(state.api)], client_max_size=state.api.max_body_bytes + 1
    )
    app[STATE] = state
    app[OPENAPI] = openapi_text().encode()
    app.router.add_get("/v1/users/{user_id}/recommendations", recommendations)
    app.router.add_get("/v1/items/{item_id}/similar", similar)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ready", ready)
    return app
