"""simic.consumer: the sidecar daemon and its library.

The folders follow the path an event takes::

    sources/     messages in: zmq_pull (live), log_files (recorded logs)
      |
    pipeline/    contract: Batch, Stage, Pipeline (decode and validate with simic.schemas); build: the
      |          stages from the configuration, in order; and the stages before the rules: accounting
      |          (who sent what, what was lost), alerts (how alerts are made and stamped), updates
      |          (one event per update); ranks: the newest value per run and rank, for the views
    analysis/    the rules, one module each; the _ modules are what they share (_rule, _ema, _rise, ...)
      |
    sinks/       results out: event_log (first in the pipeline; retention keeps it within bounds),
                 alert_console, alert_jsonl, alert_pub, dead_letter, metrics, dashboard, export/

    daemon/      ``simic-consumer run``: serve (source -> backpressure queue -> pipeline), checkpoint,
                 claim (one daemon per endpoint), security (CURVE), lifecycle (dies with its trainer);
                 healthcheck (``simic-consumer healthcheck``)
    offline/     ``simic-consumer replay`` and ``inspect``: recorded logs through the same pipeline
    report/      ``simic-consumer report``: a recorded run as one HTML page
    cli.py       the ``simic-consumer`` command     config.py   the TOML configuration every part reads
    testing.py   RecordingSink, for tests of code that uses simic

Each package's docstring lists its modules and what they may import. The names imported below are
the public surface. This package never imports torch.
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
