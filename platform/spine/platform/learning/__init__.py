"""Learned routing: request features, per-model estimates, the ``learned`` decision, replay.

Pure computation (no NATS, database or HTTP): the learning consumer, the router and the
replay command wire it. ``features`` turns a request into a sparse vector (never the text);
``estimator`` and ``weights`` hold what observations say of each model (quality as a function
of the features, latency, cost) and serialise it; ``policy`` decides; ``replay`` is the
online, bandit-feedback loop over a recording.
"""

from spine.platform.learning.estimator import Priors, QualityRegression, RunningStat
from spine.platform.learning.features import MAX_CHARS, FeatureSpace, SparseFeatures, prompt_text
from spine.platform.learning.policy import (
    Candidate,
    CandidateScore,
    LearnedPolicy,
    RoutingDecision,
    latency_bound,
    learned_quality,
)
from spine.platform.learning.replay import (
    SWEEP_KNOBS,
    RecordedOutcome,
    ReplayLearner,
    ReplayPoint,
    ReplayRecord,
    ReplayReport,
    arun_replay,
    cpt95,
    expected_cost,
    model_accuracy,
    read_records,
    replay_sweep,
    run_replay,
    summarise,
)
from spine.platform.learning.weights import (
    SNAPSHOT_FORMAT,
    ModelEstimates,
    Observation,
    RoutingWeights,
)

__all__ = [
    "MAX_CHARS",
    "SNAPSHOT_FORMAT",
    "SWEEP_KNOBS",
    "Candidate",
    "CandidateScore",
    "FeatureSpace",
    "LearnedPolicy",
    "ModelEstimates",
    "Observation",
    "Priors",
    "QualityRegression",
    "RecordedOutcome",
    "ReplayLearner",
    "ReplayPoint",
    "ReplayRecord",
    "ReplayReport",
    "RoutingDecision",
    "RoutingWeights",
    "RunningStat",
    "SparseFeatures",
    "arun_replay",
    "cpt95",
    "expected_cost",
    "latency_bound",
    "learned_quality",
    "model_accuracy",
    "prompt_text",
    "read_records",
    "replay_sweep",
    "run_replay",
    "summarise",
]
