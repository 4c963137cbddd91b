"""Records at topic boundaries, the model-manifest format, and validation."""

from genre.schemas.records import (
    ClickEvent,
    ClickType,
    CoClick,
    DeadLetter,
    ItemUpsert,
    ProfileRequest,
    Recommendation,
    RecommendedItem,
    ScoreRequest,
    UserClick,
)
from genre.schemas.validation import Rejection, parse_record

__all__ = [
    "ClickEvent",
    "ClickType",
    "CoClick",
    "DeadLetter",
    "ItemUpsert",
    "ProfileRequest",
    "Recommendation",
    "RecommendedItem",
    "Rejection",
    "ScoreRequest",
    "UserClick",
    "parse_record",
]
