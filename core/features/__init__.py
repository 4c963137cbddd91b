"""The rules the stream, training and evaluation share: decay, user state, item graph,
ranker features, vector codec and the feature spec. numpy only: no Kafka, no torch."""

from genre.core.features.codec import decode_vector, encode_vector
from genre.core.features.decay import accumulate, decay, decayed
from genre.core.features.graph import (
    CoClickEvidence,
    GraphRules,
    ItemState,
    NeighbourScores,
    apply_evidence,
    click_evidence,
)
from genre.core.features.ids import ITEM_IDS, ItemIds
from genre.core.features.ranking import candidate_features, co_click_scores, profile_match
from genre.core.features.spec import PROFILE_FEATURE, RANKER_FEATURES, FeatureSpec
from genre.core.features.users import (
    USER_VECTOR_UPDATERS,
    UserState,
    UserStateRules,
    UserVectorUpdater,
)

__all__ = [
    "ITEM_IDS",
    "PROFILE_FEATURE",
    "RANKER_FEATURES",
    "USER_VECTOR_UPDATERS",
    "CoClickEvidence",
    "FeatureSpec",
    "GraphRules",
    "ItemIds",
    "ItemState",
    "NeighbourScores",
    "UserState",
    "UserStateRules",
    "UserVectorUpdater",
    "accumulate",
    "apply_evidence",
    "candidate_features",
    "click_evidence",
    "co_click_scores",
    "decay",
    "decayed",
    "decode_vector",
    "encode_vector",
    "profile_match",
]
