"""simic.consumer: the sidecar daemon and its library.

Receive (``sources``), decode and validate (``simic.schemas``), account for every producer
(``accounting``), analyse (``analysis``), record and alert (``sinks``), export to TensorBoard and
wandb (``sinks.export``, optional extras); ``replay`` runs recorded logs through the same pipeline.
This package never imports torch.
"""

from .analysis import RULES, Rule, RuleConfig, register
from .analysis._anomaly import AnomalyDetector, AnomalyReport
from .analysis._ema import GradientEMATracker
from .config import ConsumerConfig, load_config
from .offline.replay import ReplayResult, replay
from .pipeline.accounting import Accounting, ProducerState
from .pipeline.alerts import AlertMaker
from .pipeline.build import build_pipeline
from .pipeline.contract import Batch, Pipeline, Stage, StageCounts, Stateful, SyncStage

__all__ = [
    "GradientEMATracker",
    "AnomalyDetector",
    "AnomalyReport",
    "Accounting",
    "ProducerState",
    "AlertMaker",
    "RULES",
    "Rule",
    "RuleConfig",
    "register",
    "build_pipeline",
    "ConsumerConfig",
    "load_config",
    "Batch",
    "Pipeline",
    "Stage",
    "SyncStage",
    "Stateful",
    "StageCounts",
    "ReplayResult",
    "replay",
]
