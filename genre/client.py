"""A small typed client of the pull API (``genre api``; docs/api.md).

```python
from genre.client import GenreClient

with GenreClient("http://127.0.0.1:6080", token="...") as api:
    api.post_events([{"event_id": "e1", "user_id": "u1", "item_id": "50", "ts": 1.7e9}])
    for item in api.recommendations("u1").items:
        print(item.item_id, item.score, item.reason)
```

Answers are the server's own pydantic bodies (``genre.schemas.api``); an error
answer raises ``ApiError`` carrying the status and the server's ``ErrorBody``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from genre.schemas import ClickEvent
from genre.schemas.api import ErrorBody, EventsAccepted, SimilarItems, UserRecommendations


class ApiError(RuntimeError):
    """The API answered with an error status; ``body`` says what was wrong."""

    def __init__(self, status: int, body: ErrorBody, retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {body.error}")
        self.status = status
        self.body = body
        #: The Retry-After header of a 429, in seconds.
        self.retry_after = retry_after


class GenreClient:
    """Synchronous client over httpx; one connection pool per instance."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )

    def recommendations(self, user_id: str) -> UserRecommendations:
        """The user's latest list; ``ApiError`` 404 for a user without one."""
        resp = self._http.get(f"/v1/users/{quote(user_id, safe='')}/recommendations")
        return UserRecommendations.model_validate_json(self._checked(resp).content)

    def similar(self, item_id: str, k: int = 10) -> SimilarItems:
        """Content and co-click neighbours of ``item_id``; ``ApiError`` 404 for an unknown item."""
        resp = self._http.get(f"/v1/items/{quote(item_id, safe='')}/similar", params={"k": k})
        return SimilarItems.model_validate_json(self._checked(resp).content)

    def post_events(self, events: Sequence[ClickEvent | Mapping[str, Any]]) -> EventsAccepted:
        """Send clicks (all or none are taken); ``ApiError`` 422 names each bad one, 503 the
        ids the broker did not acknowledge (send those again)."""
        body = orjson.dumps(
            [
                e.model_dump(mode="json", exclude_none=True) if isinstance(e, ClickEvent) else e
                for e in events
            ]
        )
        resp = self._http.post(
            "/v1/events", content=body, headers={"Content-Type": "application/json"}
        )
        return EventsAccepted.model_validate_json(self._checked(resp).content)

    def openapi(self) -> dict[str, Any]:
        """The served OpenAPI document."""
        return dict(orjson.loads(self._checked(self._http.get("/v1/openapi.json")).content))

    @staticmethod
    def _checked(resp: httpx.Response) -> httpx.Response:
        if resp.is_success:
            return resp
        try:
            body = ErrorBody.model_validate_json(resp.content)
        except ValueError:
            body = ErrorBody(error=resp.text[:500] or resp.reason_phrase)
        raise ApiError(resp.status_code, body, resp.headers.get("Retry-After"))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> GenreClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
