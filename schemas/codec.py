"""msgpack wire encoding, derived from the models in ``simic.schemas.models``.

A message is one msgpack array::

    [schema_version, run_id, rank, session, [event_row, event_row, ...]]

and an event row is ``[kind_code, seq, clock_ns, step, *payload]`` with the payload in the
model's field order (nil = not sent = the field's default; trailing nils are left off).

Encoding trusts its caller (the producer hands it plain Python values). Decoding trusts nothing:
the size is checked before anything is unpacked, msgpack's length limits are set from it, and
every failure is a :class:`DecodeError` whose ``reason`` the consumer counts. One bad event in a
batch costs that event only; the good events beside it are kept.

Each event is validated by its own model, through the validator pydantic builds for it (the public
``TypeAdapter(model).validator``): the models' strict settings decide what is accepted, with which
values and types, and why anything is refused. Nothing here restates a field's type or bounds.
(Other ways were measured: ``bench/decode_paths.py``, ``docs/BENCHMARKS.md``, "Decoding".)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import msgpack
from pydantic import TypeAdapter, ValidationError

from .models import EVENT_TYPES, MAX_ITEMS, MAX_TEXT, SCHEMA_VERSION, Event

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_EVENTS_PER_MESSAGE",
    "KindSpec",
    "KINDS",
    "KINDS_BY_CODE",
    "RejectReason",
    "DecodeError",
    "OversizedMessage",
    "MalformedMessage",
    "BadEnvelope",
    "UnsupportedVersion",
    "UnknownKind",
    "InvalidEvent",
    "Decoded",
    "encode_message",
    "encode_events",
    "event_row",
    "decode_message",
]

MAX_MESSAGE_BYTES = 1 << 20
"""Largest message accepted (1 MiB). Producers batch far less than this."""
MAX_EVENTS_PER_MESSAGE = 4096
"""Most events in one message."""


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What the codec knows about one event kind, computed once from its model."""

    model: type[Event]
    code: int
    kind: str
    fields: tuple[str, ...]
    field_set: frozenset[str]
    defaults: tuple[object, ...]
    """Default of each payload field (``PydanticUndefined`` for required ones; a fresh one where a factory makes it)."""
    validate: Callable[[dict[str, Any]], Event]
    """The model's own strict validation of one event's fields (``TypeAdapter(model).validator.validate_python``)."""


def _spec(model: type[Event]) -> KindSpec:
    fields = model.payload_fields()
    kind = model.model_fields["kind"].default
    defaults = tuple(model.model_fields[name].get_default(call_default_factory=True) for name in fields)
    return KindSpec(model=model, code=model.code, kind=kind, fields=fields, field_set=frozenset(fields), defaults=defaults,
                    validate=TypeAdapter(model).validator.validate_python)


KINDS: dict[str, KindSpec] = {spec.kind: spec for spec in map(_spec, EVENT_TYPES)}
"""Kind name to its spec."""
KINDS_BY_CODE: dict[int, KindSpec] = {spec.code: spec for spec in KINDS.values()}
"""Wire code to its spec."""


class RejectReason(str, enum.Enum):
    """Why a message or an event was refused. The consumer counts rejections by these values."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed_msgpack"
    BAD_ENVELOPE = "bad_envelope"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_KIND = "unknown_kind"
    INVALID_EVENT = "invalid_event"


class DecodeError(ValueError):
    """Bytes that are not a valid simic message (or event). ``reason`` says which way."""

    reason: RejectReason = RejectReason.MALFORMED

    def __init__(self, detail: str, *, index: int | None = None) -> None:
        detail = detail if len(detail) <= 500 else detail[:497] + "..."
        super().__init__(detail)
        self.detail = detail
        self.index = index
        """Position of the event in its message, for event-level errors."""

    def __str__(self) -> str:
        where = f" (event {self.index})" if self.index is not None else ""
        return f"{self.reason.value}{where}: {self.detail}"


class OversizedMessage(DecodeError):
    reason = RejectReason.OVERSIZED


class MalformedMessage(DecodeError):
    reason = RejectReason.MALFORMED


class BadEnvelope(DecodeError):
    reason = RejectReason.BAD_ENVELOPE


class UnsupportedVersion(DecodeError):
    reason = RejectReason.UNSUPPORTED_VERSION


class UnknownKind(DecodeError):
    reason = RejectReason.UNKNOWN_KIND


class InvalidEvent(DecodeError):
    reason = RejectReason.INVALID_EVENT


@dataclass(slots=True)
class Decoded:
    """A decoded message: its valid events and the events of it that were refused."""

    events: list[Event] = field(default_factory=list)
    errors: list[DecodeError] = field(default_factory=list)


# -- encoding -------------------------------------------------------------------------------------


def encode_message(run_id: str, rank: int, session: int, rows: Sequence[Sequence[Any]], *, packer: msgpack.Packer | None = None) -> bytes:
    """Pack event rows (see :func:`event_row`) of one producer session into one message."""
    body = [SCHEMA_VERSION, run_id, rank, session, rows]
    return packer.pack(body) if packer is not None else msgpack.packb(body)


def event_row(event: Event) -> list[Any]:
    """The wire row of a model instance (values equal to their default sent as nil, trailing nils left off)."""
    spec = KINDS[event.kind]
    row: list[Any] = [event.code, event.seq, event.clock_ns, event.step]
    for name, default in zip(spec.fields, spec.defaults):
        value = getattr(event, name)
        row.append(None if value == default and not _is_nan(value) else value)
    while len(row) > 4 and row[-1] is None:
        row.pop()
    return row


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def encode_events(events: Iterable[Event]) -> bytes:
    """Encode model instances that share run id, rank and session into one message."""
    events = list(events)
    if not events:
        raise ValueError("encode_events needs at least one event")
    head = events[0]
    key = (head.run_id, head.rank, head.session)
    for event in events:
        if (event.run_id, event.rank, event.session) != key:
            raise ValueError("events of one message must share run_id, rank and session")
    return encode_message(head.run_id, head.rank, head.session, [event_row(e) for e in events])


# -- decoding -------------------------------------------------------------------------------------


def _unpack(data: bytes) -> Any:
    """The message's msgpack, within the wire's limits. A map key need not be text here: the models
    refuse an event whose map has another key, and only that event (an unhashable key, which cannot
    be read at all, still fails the whole message)."""
    limit = len(data)
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        use_list=True,
        max_str_len=min(limit, MAX_TEXT * 4),
        max_bin_len=min(limit, MAX_TEXT),
        max_array_len=min(limit, MAX_EVENTS_PER_MESSAGE),
        max_map_len=min(limit, MAX_ITEMS * 4),
        max_ext_len=0,
        ext_hook=_refuse_ext,  # max_ext_len=0 still lets an empty ext through
    )


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not part of the wire format")


def _validation_detail(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    path = ".".join(str(part) for part in first["loc"]) or "<event>"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{path}: {first['msg']}{more}"


def _envelope(data: bytes, max_bytes: int) -> tuple[int, str, int, int, list[Any]]:
    """The message's version, run id, rank, session and rows, or the reason the whole message is refused."""
    if len(data) > max_bytes:
        raise OversizedMessage(f"{len(data)} bytes > limit {max_bytes}")
    try:
        body = _unpack(data)
    except Exception as error:  # msgpack raises several types; all mean the same thing here
        raise MalformedMessage(f"{type(error).__name__}: {error}"[:200]) from None
    if type(body) is not list or len(body) != 5:
        raise BadEnvelope("a message is [version, run_id, rank, session, events]")
    version, run_id, rank, session, rows = body
    if type(version) is not int:
        raise BadEnvelope("schema version must be an integer")
    if not 1 <= version <= SCHEMA_VERSION:
        raise UnsupportedVersion(f"schema version {version}; this consumer reads 1..{SCHEMA_VERSION}")
    if type(run_id) is not str or type(rank) is not int or type(session) is not int or type(rows) is not list:
        raise BadEnvelope("run_id must be a string, rank and session integers, events a list")
    return version, run_id, rank, session, rows


def _refusal(row: Any, index: int) -> DecodeError:
    """Why a row is refused before its fields are read."""
    if type(row) is not list or len(row) < 4:
        return InvalidEvent("an event row is [code, seq, clock_ns, step, *payload]", index=index)
    spec = KINDS_BY_CODE.get(row[0]) if type(row[0]) is int else None
    if spec is None:
        return UnknownKind(f"kind code {row[0]!r}", index=index)
    return InvalidEvent(f"{spec.kind} has {len(spec.fields)} payload fields, got {len(row) - 4}", index=index)


def decode_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Decoded:
    """Decode one message from untrusted bytes: each row becomes the event its model validates.

    Raises:
        DecodeError: the whole message is refused (oversized, not msgpack, bad envelope,
            unsupported version). Refused events of an otherwise valid message are returned in
            ``Decoded.errors`` instead, each with its ``index``.
    """
    version, run_id, rank, session, rows = _envelope(data, max_bytes)
    envelope = {"schema_version": version, "run_id": run_id, "rank": rank, "session": session}
    decoded = Decoded()
    events, errors = decoded.events, decoded.errors
    for index, row in enumerate(rows):
        spec = KINDS_BY_CODE.get(row[0]) if type(row) is list and len(row) >= 4 and type(row[0]) is int else None
        if spec is None or len(row) - 4 > len(spec.fields):
            errors.append(_refusal(row, index))
            continue
        fields = envelope.copy()
        fields["seq"], fields["clock_ns"], fields["step"] = row[1], row[2], row[3]
        for name, value in zip(spec.fields, row[4:]):
            if value is not None:  # nil: not sent, the field takes its default
                fields[name] = value
        try:  # fields holds declared names only, so validation need not look for extra keys
            events.append(spec.validate(fields, extra="ignore"))
        except ValidationError as error:
            errors.append(InvalidEvent(f"{spec.kind}.{_validation_detail(error)}", index=index))
    return decoded
