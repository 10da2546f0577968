"""The consumer's configuration: a TOML file validated by pydantic.

Every section and key has a default, so no file is needed. Unknown keys are an error that names
the key (a typo in a threshold must not silently keep the default). Example::

    [daemon]
    queue_messages = 10000

    [log]
    max_segment_bytes = 67108864
    max_total_bytes = 10_000_000_000   # keep about 10 GB, removing the oldest closed segments
    max_age = "30d"

    [rules.non_finite]
    severity = "critical"

    [export.tensorboard]
    dir = "runs/tensorboard"

    [export.wandb]
    project = "ppo-lstm"
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator

from .analysis import RULES

__all__ = ["DaemonConfig", "LogConfig", "RulesConfig", "ExportConfig", "TensorBoardExportConfig", "WandbExportConfig",
           "ConsumerConfig", "ConfigError", "load_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DaemonConfig(_Section):
    queue_messages: int = Field(10_000, ge=1)
    """Messages held between the receiver and the pipeline. When full, the receiver stops reading,
    ZeroMQ's queues fill, and producers drop (and count) what does not fit: memory stays bounded."""
    queue_bytes: int = Field(64 * 1024 * 1024, ge=1)
    """Bytes of messages held between the receiver and the pipeline (64 MiB): the same back-pressure
    when messages are large (up to 1 MiB each, 10,000 of them would be 10 GiB)."""
    receive_hwm: int = Field(1_000, ge=1)
    """ZeroMQ receive high-water mark, in messages, *per producer connection*: 1,000. libzmq keeps a
    small queued message in a receive buffer of up to about 18 KB, so the daemon's worst case grows by
    about ``receive_hwm x 18 KB`` per producer (18 MiB at 1,000; 10,000 let a burst of 64 producers
    take a daemon to 899 MiB). Raise it to buffer a longer stall of a few producers; the producers'
    own send queues (``send_hwm``) buffer as much again."""
    shutdown_timeout_s: float = Field(10.0, gt=0)
    """Longest a SIGINT/SIGTERM shutdown spends draining the queue before it closes anyway."""
    checkpoint_interval_s: float = Field(10.0, gt=0)
    """How often the analysis state is checkpointed to ``consumer-state.json`` (and at shutdown).
    After a crash, the log since the checkpoint is re-read, so nothing is lost either way."""
    tick_interval_s: float = Field(1.0, gt=0)
    """How often a clock tick goes through the pipeline (and into the log): time-based rules such
    as a silent producer fire on it when no traffic arrives."""
    rejection_log_interval_s: float = Field(1.0, ge=0)
    """At most one log line per rejection reason per this many seconds (the rest are counted)."""


def _seconds(value: Any) -> Any:
    """A duration: seconds as a number, or a string with a unit (``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
        if match is None:
            raise ValueError("a duration is a number of seconds or a number with a unit: 90s, 30m, 12h, 7d")
        return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return value


class LogConfig(_Section):
    max_segment_bytes: int = Field(64 * 1024 * 1024, ge=4096)
    """Size at which the event log starts a new segment file."""
    sync_interval_s: float = Field(1.0, gt=0)
    """How often the log is fsynced (it is written, unsynced, after every burst of messages)."""
    max_total_bytes: int | None = Field(None, gt=0)
    """Most bytes the log's segments may take on disk (compressed ones at their compressed size). Past it
    the oldest closed segments are removed; the segment being written never is, so the log can exceed
    this by what the live segment holds. None: no limit. At least ``max_segment_bytes``."""
    max_age: Annotated[float | None, BeforeValidator(_seconds)] = Field(None, gt=0)
    """Closed segments last written longer ago than this are removed: seconds, or ``"30m"``,
    ``"12h"``, ``"7d"``. None: no limit. Checked once a minute and when a segment is closed."""
    compression: Literal["zstd", "none"] = "zstd"
    """Closed segments are compressed with zstd (``segment-N.simlog.zst``), off the receiving path
    (a background thread, while the daemon receives): 2.2x smaller on the reference trainer's log
    (float64 values compress poorly; ``docs/BENCHMARKS.md``). Every reader (replay, inspect, report)
    takes compressed and plain segments alike."""
    compression_level: int = Field(3, ge=1, le=19)
    """zstd level: 3 compresses about 290 MB/s on one core; on the reference trainer's log 9 gains 4 %
    for 6x the CPU and 19 gains 10 % for 70x."""

    @model_validator(mode="after")
    def _total_holds_a_segment(self) -> "LogConfig":
        if self.max_total_bytes is not None and self.max_total_bytes < self.max_segment_bytes:
            raise ValueError(f"max_total_bytes ({self.max_total_bytes}) must be at least max_segment_bytes ({self.max_segment_bytes}): "
                             "the segment being written is never removed")
        return self


class TensorBoardExportConfig(_Section):
    dir: str | None = None
    """Write TensorBoard event files under this directory, one run directory per run and rank
    (``DIR/<run_id>/rank<N>``); None: off. ``run --tensorboard DIR`` sets it. Needs
    ``simic-telemetry[tensorboard]``."""
    flush_secs: float = Field(5.0, gt=0)
    """How often the event files are flushed to disk (and at the end of every session): 5 s, so a
    TensorBoard watching the directory is at most that far behind."""


class WandbExportConfig(_Section):
    project: str | None = None
    """Log to this wandb project, one wandb run per run and rank (grouped by run id); None: off.
    ``run --wandb [PROJECT]`` sets it (``simic`` when no project is given). Needs ``simic-telemetry[wandb]``."""
    entity: str | None = None
    """The wandb entity (team or user); None: your default one."""
    mode: Literal["online", "offline"] | None = None
    """None: what ``WANDB_MODE`` and ``wandb login`` say (online when logged in). ``offline`` keeps the
    runs on disk for ``wandb sync``."""
    dir: str | None = None
    """Where wandb keeps its files (``DIR/wandb/...``); None: the consumer's log directory."""


class ExportConfig(_Section):
    tensorboard: TensorBoardExportConfig = TensorBoardExportConfig()
    wandb: WandbExportConfig = WandbExportConfig()
    queue_batches: int = Field(1_000, ge=1)
    """Messages held for each exporter (each has its own queue and thread): 1,000, about 15 s of a
    trainer sending 64 messages a second. When an exporter falls that far behind (a slow disk, wandb's
    service busy), further messages are not exported, and counted
    (``simic_export_dropped_events_total``, the exit summary): the receiver, the event log and the
    alerts never wait for an exporter."""
    close_timeout_s: float = Field(10.0, gt=0)
    """Longest the daemon waits at shutdown for each exporter to write what it holds and close
    (wandb finishing an offline run takes about a second); what is left then is counted as not
    written. 10 s keeps a sidecar started by its trainer inside the 15 s the trainer gives it to stop
    (online, wandb keeps every point in its run file for ``wandb sync`` if its upload is cut short)."""


RulesConfig: type[BaseModel] = create_model(  # one field per registered rule, named after it
    "RulesConfig",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **{name: (rule.Config, rule.Config()) for name, rule in RULES.items()},
)


class ConsumerConfig(_Section):
    daemon: DaemonConfig = DaemonConfig()
    log: LogConfig = LogConfig()
    rules: RulesConfig = RulesConfig()  # type: ignore[valid-type]
    export: ExportConfig = ExportConfig()


class ConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message names the file and the key."""


def load_config(path: str | os.PathLike[str] | None) -> ConsumerConfig:
    """Read and validate a TOML config file (``None``: all defaults)."""
    if path is None:
        return ConsumerConfig()
    try:
        data: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    try:
        return ConsumerConfig.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            key = ".".join(str(part) for part in item["loc"])
            reason = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"{key}: {reason}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
