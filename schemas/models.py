"""The event models: the single declaration of every event simic-telemetry sends.

Each event kind is one pydantic model. The wire encoding (``simic.schemas.codec``) is derived from
these declarations: a kind's *code* names it on the wire and its payload fields travel as a
positional array in declaration order. Nothing else in the project lists the fields again.

Evolution rules (the wire is a contract between processes that upgrade at different times):

1. Kind codes never change and are never reused. A new kind takes a new code.
2. Fields are only ever appended to the end of a kind, always with a default. A field is never
   removed, reordered or retyped; one that is no longer measured stays and is sent as nil.
3. Every message carries ``SCHEMA_VERSION``. A consumer decodes every version up to its own: an
   older message simply lacks the newer trailing fields, which take their defaults. A consumer
   refuses a newer version (``unsupported_version``): upgrade consumers before producers.
4. Each version bump freezes a wire fixture under ``tests/schemas/fixtures/`` together with its
   expected decoding, and the test suite decodes every one of them with today's code.

On the wire a nil payload value means "not sent": the field takes its default (for optional
values that default is ``None``, which means *missing*, never 0.0). NaN and +/-Inf are valid
float values everywhere: they are what the analysis looks for.

An empty list or mapping default is declared ``Field(default_factory=list)`` (or ``dict``): every
event gets its own, made by one call, where a literal ``[]`` or ``{}`` default is deep-copied by
pydantic for every event it validates (about 1 us each, as much as validating a small event).

Example (version 1)::

    [1, "run-42", 0, 7, [[3, 12, 1723456789000, 40, {"slot": 0.8, "op": null}, 0.8]]]
     |  |         |  |    |  |   |              |   '-- payload, field order of HeadGradNorms
     |  |         |  |    |  |   |              '-- step
     |  |         |  |    |  |   '-- producer clock (ns)
     |  |         |  |    |  '-- sequence number
     |  |         |  |    '-- kind code (3 = head_grad_norms)
     |  |         |  '-- producer session
     |  |         '-- rank
     |  '-- run id
     '-- schema version
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

__all__ = [
    "SCHEMA_VERSION",
    "ENVELOPE_FIELDS",
    "Event",
    "RunStart",
    "StepTiming",
    "HeadGradNorms",
    "LstmHealth",
    "PpoUpdate",
    "ProfilerTrace",
    "Heartbeat",
    "RunEnd",
    "Alert",
    "Metrics",
    "Episodes",
    "ParamUpdates",
    "DeliveryReceipt",
    "AnyEvent",
    "EVENT_TYPES",
    "iter_numbers",
]

SCHEMA_VERSION = 4
"""The version this code writes. It reads every version from 1 up to this one.

Version 2 added ``HeadGradNorms.samples``, ``LstmHealth.name``, ``PpoUpdate.clip_range`` and ``loss``,
``Alert.received_at``, and the kinds ``metrics``, ``episodes`` and ``param_updates``. Version 3 added
the kind ``delivery_receipt``. Version 4 added ``StepTiming.wait_ms``."""

# Bounds that keep a decoded event small no matter what arrives.
MAX_NAME = 128
"""Longest run id, head, phase or rule name (characters)."""
MAX_TEXT = 4096
"""Longest free text (messages, paths, error descriptions)."""
MAX_ITEMS = 256
"""Most entries in one mapping or list of a payload."""
MAX_DEPTH = 8
"""Deepest nesting of free-form values (run config, alert values)."""

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
Count = Annotated[int, Field(ge=0, lt=2**63)]


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


FreeForm = Annotated[dict[Name, JsonValue], Field(max_length=MAX_ITEMS)]
"""JSON-like values only: msgpack bin, ext types and non-string keys are refused at any depth."""


class Event(BaseModel):
    """The envelope every event carries, whatever its kind.

    On the wire the run id, rank, session and schema version are stated once per message (they
    are the same for every event a producer sends); after decoding each event carries them all.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True)

    code: ClassVar[int] = 0
    """Wire code of the kind (rule 1: never changes)."""

    schema_version: Annotated[int, Field(ge=1)] = SCHEMA_VERSION
    """Schema version the event was written with."""
    kind: str
    """Name of the event kind, e.g. ``"head_grad_norms"``."""
    run_id: Name
    """The training run this event belongs to."""
    rank: Annotated[int, Field(ge=0, lt=2**31)]
    """Distributed rank of the producer (0 for a single process)."""
    session: Annotated[int, Field(ge=0, lt=2**63)]
    """Producer session: a new value each time an emitter starts, so restarts are told apart."""
    seq: Count
    """Per-session sequence number: 0, 1, 2, ... Gaps are events lost on the way."""
    clock_ns: Int64
    """Producer's monotonic clock (``time.monotonic_ns()``) when the event was made."""
    step: Int64
    """Training step (update index, or environment step: the trainer's own counter)."""

    @classmethod
    def payload_fields(cls) -> tuple[str, ...]:
        """This kind's own fields, in wire order."""
        return tuple(name for name in cls.model_fields if name not in ENVELOPE_FIELDS)


ENVELOPE_FIELDS = tuple(Event.model_fields)


class RunStart(Event):
    """First event of every producer session: who is training what, where."""

    code: ClassVar[int] = 1
    kind: Literal["run_start"] = "run_start"
    host: Name
    """Host name of the trainer."""
    pid: Count
    """Process id of the trainer."""
    world_size: Annotated[int, Field(ge=1, lt=2**31)] = 1
    """Number of ranks in the run."""
    torch_version: Name | None = None
    """``torch.__version__`` when torch is loaded in the trainer."""
    device: Text | None = None
    """Device name, e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"cpu"``."""
    heads: Annotated[list[Name], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    """Names of the policy's action heads (and the value head), e.g. slot, blueprint, blend, op, value."""
    config: FreeForm = Field(default_factory=dict)
    """Free-form run configuration (hyperparameters)."""
    producer_version: Name | None = None
    """Version of simic-telemetry that produced the events."""

    @field_validator("config")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_depth(value)
        return value


class StepTiming(Event):
    """How long phases of a training step took, in milliseconds."""

    code: ClassVar[int] = 2
    kind: Literal["step_timing"] = "step_timing"
    phases_ms: Annotated[dict[Name, float], Field(max_length=MAX_ITEMS)]
    """Phase name (rollout, update, ...) to elapsed milliseconds."""
    clock: Literal["cuda_event", "cpu"] = "cpu"
    """What measured it: CUDA events (GPU time) or ``time.perf_counter`` (host time)."""
    wait_ms: Annotated[dict[Name, float], Field(max_length=MAX_ITEMS)] = Field(default_factory=dict)
    """Phase name to the milliseconds of it that the measuring thread spent ready to run but waiting
    for a CPU (host-timed phases, where the kernel says: Linux's per-thread scheduler statistics):
    time other processes took from the phase. Phases left out: not known. (version 4)"""


class HeadGradNorms(Event):
    """Gradient L2 norms per policy head for one optimiser step."""

    code: ClassVar[int] = 3
    kind: Literal["head_grad_norms"] = "head_grad_norms"
    norms: Annotated[dict[Name, float | None], Field(max_length=MAX_ITEMS)]
    """Head name to the L2 norm of its gradients. ``None``: the head had no gradient (missing)."""
    total: float | None = None
    """L2 norm over all parameters measured (as ``clip_grad_norm_`` computes it)."""
    pre_clip_total: float | None = None
    """Total norm before gradient clipping, when known."""
    post_clip_total: float | None = None
    """Total norm after gradient clipping, when known."""
    nonfinite: Annotated[dict[Name, Count], Field(max_length=MAX_ITEMS)] = Field(default_factory=dict)
    """Head name to the number of non-finite gradient elements (heads with none may be left out)."""
    stage: Literal["pre_clip", "post_clip"] | None = None
    """Whether ``norms`` and ``total`` were measured before or after clipping."""
    max_norm: float | None = None
    """The clipping threshold in use, when known."""
    samples: Count | None = None
    """How many gradient measurements (optimiser steps) this event combines. None or 1: one. More:
    an update of several optimiser steps (minibatches) sent as one event; each norm is then the root
    mean square over those steps (a NaN or Inf in any of them stays in it). (version 2)"""


class LstmHealth(Event):
    """Statistics of the recurrent core's hidden (h) and cell (c) state."""

    code: ClassVar[int] = 4
    kind: Literal["lstm_health"] = "lstm_health"
    h_norm: float | None = None
    """L2 norm of h over all layers and environments."""
    c_norm: float | None = None
    """L2 norm of c over all layers and environments."""
    h_rms: float | None = None
    """Root mean square of h."""
    c_rms: float | None = None
    """Root mean square of c."""
    h_max_abs: float | None = None
    """Largest absolute value in h."""
    c_max_abs: float | None = None
    """Largest absolute value in c."""
    h_env_max_rms: float | None = None
    """Largest per-environment RMS of h (one runaway environment hides in the mean)."""
    c_env_max_rms: float | None = None
    """Largest per-environment RMS of c."""
    has_nan: bool | None = None
    """Whether h or c holds a NaN."""
    has_inf: bool | None = None
    """Whether h or c holds an infinity."""
    layer_h_rms: Annotated[list[float], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    """RMS of h per layer, when given."""
    layer_c_rms: Annotated[list[float], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    """RMS of c per layer, when given."""
    envs: Count | None = None
    """Number of environments the statistics cover (after masking)."""
    name: Name | None = None
    """Which recurrent state, when a model has several (``actor``, ``critic``); None: the only one. (version 2)"""


class PpoUpdate(Event):
    """Metrics of one PPO update (all optional: send what you have)."""

    code: ClassVar[int] = 5
    kind: Literal["ppo_update"] = "ppo_update"
    policy_loss: float | None = None
    value_loss: float | None = None
    entropy: Annotated[dict[Name, float], Field(max_length=MAX_ITEMS)] = Field(default_factory=dict)
    """Head name to the mean entropy of its action distribution."""
    approx_kl: float | None = None
    clip_fraction: float | None = None
    ratio_min: float | None = None
    ratio_max: float | None = None
    explained_variance: float | None = None
    """Explained variance of the value head; None or NaN when undefined (constant returns), never 0."""
    learning_rate: float | None = None
    clip_range: float | None = None
    """The PPO ratio clipping range (epsilon) in use. (version 2)"""
    loss: float | None = None
    """The total loss the optimiser minimised (policy, value and entropy terms together). (version 2)"""


class ProfilerTrace(Event):
    """A profiler trace was written."""

    code: ClassVar[int] = 6
    kind: Literal["profiler_trace"] = "profiler_trace"
    path: Text
    """Where the trace file was written (on the trainer's host)."""
    format: Name = "chrome_trace"
    """File format of the trace."""


class Heartbeat(Event):
    """Sent when a producer has nothing else to say, so silence means trouble."""

    code: ClassVar[int] = 7
    kind: Literal["heartbeat"] = "heartbeat"
    sent: Count | None = None
    """Events of this session handed to the transport before the message carrying this heartbeat."""
    dropped: Count | None = None
    """Events this session dropped before they left the process (queue full, no consumer)."""
    readouts_dropped: Count | None = None
    """GPU measurements the collectors dropped unread (readout ring full, timers backlogged): lost
    before they became events, so no sequence gap shows them."""


class RunEnd(Event):
    """Last event of a producer session: how it ended and what it produced."""

    code: ClassVar[int] = 8
    kind: Literal["run_end"] = "run_end"
    status: Literal["ok", "error", "interrupted", "exit"] = "ok"
    """``ok``: closed by the trainer; ``error``: an uncaught exception; ``interrupted``: Ctrl-C;
    ``exit``: the interpreter exited without closing the emitter."""
    sent: Count | None = None
    """Events of this session handed to the transport before this one. The consumer compares it
    with what it received to count what was lost on the way (``seq`` says how many were made)."""
    dropped: Count | None = None
    """Events dropped inside the producer (queue full, no consumer) before this one."""
    error: Text | None = None
    """The exception that ended the run, when ``status`` is ``error``."""
    readouts_dropped: Count | None = None
    """GPU measurements the collectors dropped unread over the session (see ``Heartbeat``)."""


AlertValue = float | int | str | bool | None


class Alert(Event):
    """An analysis rule fired (or cleared). ``run_id``, ``rank`` and ``step`` are the ones it is about."""

    code: ClassVar[int] = 9
    kind: Literal["alert"] = "alert"
    rule: Name
    """Rule that fired, e.g. ``non_finite``."""
    severity: Literal["info", "warning", "critical"]
    message: Text
    """One human sentence."""
    values: Annotated[dict[Name, AlertValue], Field(max_length=MAX_ITEMS)] = Field(default_factory=dict)
    """The values that made the rule fire."""
    cleared: bool = False
    """True when this alert says the condition is over."""
    received_at: float | None = None
    """Wall-clock time (Unix seconds) at which the consumer received the evidence that made the rule
    fire or clear; for a silence, when the silence was noticed. Kept in the log, so a replayed alert
    tells how long after a hang it came. (version 2)"""


class Metrics(Event):
    """Named scalar values a trainer logged for one step: a loss, an accuracy, a return. (version 2)"""

    code: ClassVar[int] = 10
    kind: Literal["metrics"] = "metrics"
    values: Annotated[dict[Name, float | None], Field(max_length=MAX_ITEMS)]
    """Metric name (namespaced as the trainer logs it, e.g. ``train/loss``) to its value; None: not computed."""


class Episodes(Event):
    """Episodes that ended since the last such event: their returns and lengths. (version 2)"""

    code: ClassVar[int] = 11
    kind: Literal["episodes"] = "episodes"
    returns: Annotated[list[float], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    """Undiscounted return of each finished episode (the last ``MAX_ITEMS`` when more ended)."""
    lengths: Annotated[list[Count], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    """Length in environment steps of each finished episode, in the order of ``returns``."""
    count: Count | None = None
    """How many episodes ended in all (``returns`` may keep only the last ones)."""


class ParamUpdates(Event):
    """How far one optimiser step moved the parameters, per head: ``||theta_after - theta_before||``
    over ``||theta_before||`` (rows only, for a head made of rows of a shared tensor). It is the step
    size the optimiser really took, which a learning rate that is not what the schedule says (or a
    corrupted optimiser state) changes and gradient norms under Adam do not show. (version 2)"""

    code: ClassVar[int] = 12
    kind: Literal["param_updates"] = "param_updates"
    ratios: Annotated[dict[Name, float | None], Field(max_length=MAX_ITEMS)]
    """Head name to the update-to-weight ratio. 0.0: no parameter of the head changed. ``None``: not
    measurable (the head's parameters were all zero before the step)."""
    update_norms: Annotated[dict[Name, float | None], Field(max_length=MAX_ITEMS)] = Field(default_factory=dict)
    """Head name to the L2 norm of the step's change of its parameters."""
    param_norms: Annotated[dict[Name, float | None], Field(max_length=MAX_ITEMS)] = Field(default_factory=dict)
    """Head name to the L2 norm of its parameters before the step (their scale)."""
    total_ratio: float | None = None
    """The ratio over every measured parameter (the ones a clip covers), None when not measurable."""
    samples: Count | None = None
    """How many optimiser steps this event combines. None or 1: one. More: an update of several
    optimiser steps (minibatches) sent as one event; each ratio and norm is then the root mean square
    over those steps (a ratio over the steps where it was measurable); a NaN or Inf in any stays in it."""
    learning_rate: float | None = None
    """The learning rate of the optimiser's first parameter group at the (last) step, when a number."""


class DeliveryReceipt(Event):
    """The consumer's answer to a session's ``run_end``: how much of the session it received.

    Consumers send it, producers never do: a simic-consumer publishes one on its alerts channel
    (topic: the run id) when it has logged and counted a ``run_end``, and ``Emitter.close()`` waits
    for it (up to ``linger_ms``) to tell what was delivered. The envelope is the ``run_end``'s: its
    run, rank, session, sequence number, clock and step. (version 3)"""

    code: ClassVar[int] = 13
    kind: Literal["delivery_receipt"] = "delivery_receipt"
    received: Count
    """Distinct events of the session the consumer received, the ``run_end`` included."""
    lost: Count = 0
    """Sequence numbers of the session that never arrived (gaps)."""


EVENT_TYPES: tuple[type[Event], ...] = (
    RunStart,
    StepTiming,
    HeadGradNorms,
    LstmHealth,
    PpoUpdate,
    ProfilerTrace,
    Heartbeat,
    RunEnd,
    Alert,
    Metrics,
    Episodes,
    ParamUpdates,
    DeliveryReceipt,
)
"""Every event kind, in code order."""

AnyEvent = Annotated[
    Union[RunStart, StepTiming, HeadGradNorms, LstmHealth, PpoUpdate, ProfilerTrace, Heartbeat, RunEnd, Alert, Metrics, Episodes,
          ParamUpdates, DeliveryReceipt],
    Field(discriminator="kind"),
]


def iter_numbers(event: Event):
    """Yield ``(field_path, value)`` for every float in an event's payload (NaN and Inf included)."""
    for name in event.payload_fields():
        value = getattr(event, name)
        if isinstance(value, float):
            yield name, value
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, float):
                    yield f"{name}.{key}", item
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, float):
                    yield f"{name}[{index}]", item


def _check_codes() -> None:
    codes = [t.code for t in EVENT_TYPES]
    assert len(set(codes)) == len(codes) and 0 not in codes, "kind codes must be unique and non-zero"


_check_codes()
