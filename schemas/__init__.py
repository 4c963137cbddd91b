"""Records at topic boundaries, the model-manifest format, and validation."""

from genre.schemas.records import (
    ClickEvent,
    ClickType,
    CoClickRow,
    CoClicks,
    DeadLetter,
    ItemUpsert,
    ItemVector,
    ProfileRequest,
    ProfileRequests,
    Recommendation,
    RecommendedItem,
    ScoreRequest,
    ScoreRequests,
    UserClick,
    UserClicks,
)
from genre.schemas.validation import Rejection, parse_record

__all__ = [
    "ClickEvent",
    "ClickType",
    "CoClickRow",
    "CoClicks",
    "DeadLetter",
    "ItemUpsert",
    "ItemVector",
    "ProfileRequest",
    "ProfileRequests",
    "Recommendation",
    "RecommendedItem",
    "Rejection",
    "ScoreRequest",
    "ScoreRequests",
    "UserClick",
    "UserClicks",
    "parse_record",
]
