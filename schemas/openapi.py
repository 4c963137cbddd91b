"""The pull API's OpenAPI 3.1 document, generated from the pydantic bodies.

``genre api`` serves it at ``GET /v1/openapi.json``; the committed copy is
``schemas/openapi/api.json`` (regenerate: ``make schemas``, or
``python -c "from genre.schemas.openapi import write_openapi; write_openapi()"``;
a test fails when they drift).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from genre.schemas.api import API_BODIES
from genre.schemas.records import ClickEvent

OPENAPI_PATH = Path(__file__).parent / "openapi" / "api.json"
API_VERSION = "1.0.0"
_REF = "#/components/schemas/{model}"


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _error(description: str) -> dict[str, Any]:
    return _json("#/components/schemas/ErrorBody", description)


def _components() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "serialization") for m in API_BODIES.values()
    ]
    models.append((ClickEvent, "validation"))
    _, defs = models_json_schema(models, ref_template=_REF)
    return dict(sorted(defs["$defs"].items()))


def _paths() -> dict[str, Any]:
    auth = {"401": _error("A token is configured (api.token) and the request lacks it.")}
    limited = {
        "429": {
            **_error("Over the per-client rate limit (api.rate_limit_per_s)."),
            "headers": {
                "Retry-After": {
                    "description": "Seconds until a request would be admitted.",
                    "schema": {"type": "integer"},
                }
            },
        }
    }
    click = {"$ref": "#/components/schemas/ClickEvent"}
    return {
        "/v1/users/{user_id}/recommendations": {
            "get": {
                "operationId": "getRecommendations",
                "summary": "The user's latest list: items, scores, reasons, model, time, arm.",
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json("#/components/schemas/UserRecommendations", "The latest list."),
                    "404": _error("No list was published for this user (yet)."),
                    **auth,
                    **limited,
                },
            }
        },
        "/v1/items/{item_id}/similar": {
            "get": {
                "operationId": "getSimilarItems",
                "summary": "Content and co-click neighbours of an item, each with its score.",
                "parameters": [
                    {
                        "name": "item_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "k",
                        "in": "query",
                        "required": False,
                        "description": "Neighbours per kind, 1..api.max_k (default 10).",
                        "schema": {"type": "integer", "minimum": 1, "default": 10},
                    },
                ],
                "responses": {
                    "200": _json("#/components/schemas/SimilarItems", "The neighbours."),
                    "400": _error("k is not an integer in 1..api.max_k."),
                    "404": _error("The item is unknown (no vector, no co-clicks)."),
                    **auth,
                    **limited,
                },
            }
        },
        "/v1/events": {
            "post": {
                "operationId": "postEvents",
                "summary": "One click or an array of clicks, produced to genre.clicks keyed by "
                "user id once all are valid.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"oneOf": [click, {"type": "array", "items": click}]}
                        }
                    },
                },
                "responses": {
                    "202": _json("#/components/schemas/EventsAccepted", "All acknowledged."),
                    "400": _error("The body is not a JSON object or array of objects."),
                    "413": _error("Over api.max_body_bytes or api.max_events."),
                    "422": _error("Some events are invalid: nothing was sent; see records."),
                    "503": _error(
                        "The broker did not acknowledge every event within "
                        "api.delivery_timeout_s; not_accepted names the ids to send again."
                    ),
                    **auth,
                    **limited,
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "responses": {"200": {"description": "The OpenAPI document."}},
            }
        },
    }


def render_openapi() -> dict[str, Any]:
    """The OpenAPI document as data."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GENRE pull API",
            "version": API_VERSION,
            "description": "Latest recommendations per user, similar items, and click "
            "ingestion over HTTP (docs/api.md).",
        },
        "paths": _paths(),
        "components": {
            "schemas": _components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


def openapi_text() -> str:
    """The document as pretty, stable JSON text (what is committed and served)."""
    return json.dumps(render_openapi(), indent=2, sort_keys=True) + "\n"


def write_openapi(path: Path = OPENAPI_PATH) -> Path:
    """Write the document to ``path`` (the committed copy by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(openapi_text())
    return path
