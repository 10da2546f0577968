"""msgpack wire encoding, derived from the models in ``simic.schemas.models``.

A message is one msgpack array::

    [schema_version, run_id, rank, session, [event_row, event_row, ...]]

and an event row is ``[kind_code, seq, clock_ns, step, *payload]`` with the payload in the
model's field order (nil = not sent = the field's default; trailing nils are left off).

Encoding trusts its caller (the producer hands it plain Python values). Decoding trusts nothing:
the size is checked before anything is unpacked, msgpack's length limits are set from it, and
every failure is a :class:`DecodeError` whose ``reason`` the consumer counts. One bad event in a
batch costs that event only; the good events beside it are kept. A row whose values already have
exactly the types and bounds its model declares is built without running pydantic (the same event,
several times faster); every other row is validated by pydantic, which decides what is refused.
"""

from __future__ import annotations

import copy
import enum
import math
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Iterable, Literal, Sequence, Union, get_args, get_origin

import annotated_types
import msgpack
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .models import ENVELOPE_FIELDS, EVENT_TYPES, MAX_ITEMS, MAX_TEXT, SCHEMA_VERSION, Event

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
    """Default of each payload field (``PydanticUndefined`` for required ones)."""


def _spec(model: type[Event]) -> KindSpec:
    fields = model.payload_fields()
    kind = model.model_fields["kind"].default
    defaults = tuple(model.model_fields[name].default for name in fields)
    return KindSpec(model=model, code=model.code, kind=kind, fields=fields, field_set=frozenset(fields), defaults=defaults)


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
    limit = len(data)
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
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


def _decode_row(version: int, run_id: str, rank: int, session: int, row: Any) -> Event:
    if type(row) is not list or len(row) < 4:
        raise InvalidEvent("an event row is [code, seq, clock_ns, step, *payload]")
    spec = KINDS_BY_CODE.get(row[0]) if type(row[0]) is int else None
    if spec is None:
        raise UnknownKind(f"kind code {row[0]!r}")
    payload = row[4:]
    if len(payload) > len(spec.fields):
        raise InvalidEvent(f"{spec.kind} has {len(spec.fields)} payload fields, got {len(payload)}")
    data: dict[str, Any] = {
        "schema_version": version,
        "run_id": run_id,
        "rank": rank,
        "session": session,
        "seq": row[1],
        "clock_ns": row[2],
        "step": row[3],
    }
    for name, value in zip(spec.fields, payload):
        if value is not None:
            data[name] = value
    try:
        return spec.model.model_validate(data)
    except ValidationError as error:
        raise InvalidEvent(f"{spec.kind}.{_validation_detail(error)}") from None


# -- decoding without validating twice ----------------------------------------------------------
#
# pydantic validates a small event in about 3 us, most of what the consumer may spend on one. A row
# whose every value has exactly the type its field declares, within the field's bounds, is valid
# by construction: it is built directly (about 1 us) with the field values, defaults and set of
# given fields that validation gives. The checks are derived from the models' annotations, as the
# encoding is. A value that fails them, and every field or model they do not cover (a validator, a
# type not handled below), goes through pydantic exactly as before: what is refused, and why, stays
# pydantic's decision. Values come from msgpack, so their types are the exact builtin ones.

_NoneType = type(None)
_INF = math.inf
_object_new = object.__new__
_MAX_CACHED = 256
"""Most cached plans per kind and key tuples per mapping field (hostile input cannot grow memory)."""


class _NotDerived(Exception):
    """An annotation, constraint or model setting the exact checks do not cover."""


@dataclass(frozen=True, slots=True)
class _Accepts:
    """The values a strict pydantic type accepts: one of ``types`` exactly, within the bounds given."""

    types: frozenset[type]
    lengths: tuple[int, float] | None = None
    """``str`` only: ``lo <= len(value) <= hi``."""
    bounds: tuple[float, float] | None = None
    """``int`` only: ``lo <= value <= hi``."""
    check: Callable[[Any], bool] | None = None
    """Anything else (literal values, container items, union members)."""

    @property
    def plain(self) -> bool:
        """The exact type is the whole test."""
        return self.lengths is None and self.bounds is None and self.check is None


def _constraints(metadata: Iterable[Any]) -> list[Any]:
    found: list[Any] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            if item.alias is not None or item.validation_alias is not None or item.discriminator is not None:
                raise _NotDerived(f"field settings {item!r}")
            found.extend(_constraints(item.metadata))
        elif isinstance(item, (annotated_types.MinLen, annotated_types.MaxLen, annotated_types.Ge, annotated_types.Gt,
                               annotated_types.Le, annotated_types.Lt)):
            found.append(item)
        else:
            raise _NotDerived(f"constraint {item!r}")
    return found


def _int_bounds(constraints: list[Any]) -> tuple[float, float] | None:
    lo, hi = -_INF, _INF
    for item in constraints:
        if isinstance(item, annotated_types.Ge) and type(item.ge) is int:
            lo = max(lo, item.ge)
        elif isinstance(item, annotated_types.Gt) and type(item.gt) is int:
            lo = max(lo, item.gt + 1)
        elif isinstance(item, annotated_types.Le) and type(item.le) is int:
            hi = min(hi, item.le)
        elif isinstance(item, annotated_types.Lt) and type(item.lt) is int:
            hi = min(hi, item.lt - 1)
        else:
            raise _NotDerived(f"constraint {item!r} on an int")
    return (lo, hi) if constraints else None


def _lengths(constraints: list[Any]) -> tuple[int, float] | None:
    lo, hi = 0, _INF
    for item in constraints:
        if isinstance(item, annotated_types.MinLen):
            lo = max(lo, item.min_length)
        elif isinstance(item, annotated_types.MaxLen):
            hi = min(hi, item.max_length)
        else:
            raise _NotDerived(f"constraint {item!r} on a length")
    return (lo, hi) if constraints else None


def _derive(annotation: Any, metadata: Iterable[Any] = ()) -> _Accepts:
    """What a strict pydantic field of this annotation accepts (raises :class:`_NotDerived` when not covered)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _derive(inner, (*metadata, *extra))
    constraints = _constraints(metadata)
    if origin is Union or origin is types.UnionType:
        if constraints:
            raise _NotDerived(f"constraints on the union {annotation!r}")
        members = [_derive(arg) for arg in get_args(annotation)]
        accepted = frozenset().union(*(m.types for m in members))
        if all(m.plain for m in members):
            return _Accepts(accepted)
        tests = tuple(_predicate(m) for m in members)
        return _Accepts(accepted, check=lambda value: any(test(value) for test in tests))
    if origin is Literal:
        values = get_args(annotation)
        if constraints or not all(type(v) is str for v in values):
            raise _NotDerived(f"literal {annotation!r}")
        return _Accepts(frozenset({str}), check=frozenset(values).__contains__)
    if annotation is float or annotation is bool or annotation is _NoneType:
        if constraints:
            raise _NotDerived(f"constraints on {annotation!r}")
        return _Accepts(frozenset({annotation}))
    if annotation is int:
        return _Accepts(frozenset({int}), bounds=_int_bounds(constraints))
    if annotation is str:
        return _Accepts(frozenset({str}), lengths=_lengths(constraints))
    if origin is dict or origin is list:
        lo, hi = _lengths(constraints) or (0, _INF)
        args = get_args(annotation)
        if origin is list:
            each = _derive(args[0])
            if each.plain:  # the usual list of floats: one call
                allowed = each.types
                return _Accepts(frozenset({list}), check=lambda value: lo <= len(value) <= hi and set(map(type, value)) <= allowed)
            items = _all_accepted(each)
            return _Accepts(frozenset({list}), check=lambda value: lo <= len(value) <= hi and (not value or items(value)))
        return _Accepts(frozenset({dict}), check=_mapping_check(lo, hi, _all_accepted(_derive(args[0])), _derive(args[1])))
    raise _NotDerived(f"type {annotation!r}")


def _predicate(accepts: _Accepts) -> Callable[[Any], bool]:
    """The test of one value."""
    allowed, lengths, bounds, check = accepts.types, accepts.lengths, accepts.bounds, accepts.check
    if accepts.plain and len(allowed) == 1:
        (only,) = allowed
        return lambda value: type(value) is only

    def test(value: Any) -> bool:
        if type(value) not in allowed:
            return False
        if lengths is not None and not lengths[0] <= len(value) <= lengths[1]:
            return False
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            return False
        return check is None or check(value)

    return test


def _all_accepted(accepts: _Accepts) -> Callable[[Iterable[Any]], bool]:
    """The test of a non-empty collection of items (whole-collection builtins where they say the same)."""
    allowed = accepts.types
    if accepts.plain:
        return lambda items: set(map(type, items)) <= allowed
    if allowed == {str} and accepts.check is None:
        lo, hi = accepts.lengths
        return lambda items: set(map(type, items)) <= allowed and lo <= min(map(len, items)) and max(map(len, items)) <= hi
    if allowed == {int} and accepts.check is None:
        lo, hi = accepts.bounds
        return lambda items: set(map(type, items)) <= allowed and lo <= min(items) and max(items) <= hi
    test = _predicate(accepts)
    return lambda items: all(map(test, items))


def _mapping_check(lo: int, hi: float, keys: Callable[[Iterable[Any]], bool], values: _Accepts) -> Callable[[dict], bool]:
    """A mapping's test. The key tuples that passed are remembered: a trainer sends the same head and
    phase names in every event, and equal (exact ``str``) keys pass the same checks."""
    known: set[tuple[Any, ...]] = set()
    allowed = values.types
    items = None if values.plain else _all_accepted(values)

    def check(value: dict) -> bool:
        if not lo <= len(value) <= hi:
            return False
        if not value:
            return True
        names = tuple(value)
        if names not in known:
            if not keys(names):
                return False
            if len(known) < _MAX_CACHED:
                known.add(names)
        if items is None:
            return set(map(type, value.values())) <= allowed
        return items(value.values())

    return check


def _residual(accepts: _Accepts) -> Callable[[Any], bool]:
    """The test of a value whose type is known to be one of ``accepts.types`` (one call, however built)."""
    lengths, bounds, check = accepts.lengths, accepts.bounds, accepts.check
    if lengths is None and bounds is None:
        return check
    if check is None and bounds is None:
        lo, hi = lengths
        return lambda value: lo <= len(value) <= hi
    if check is None and lengths is None:
        lo, hi = bounds
        return lambda value: lo <= value <= hi
    return _predicate(accepts)


def _given(annotation: Any) -> Any:
    """A payload field's annotation without ``None``: a nil on the wire is "not sent" (the default), never validated."""
    if get_origin(annotation) is Union or get_origin(annotation) is types.UnionType:
        members = tuple(arg for arg in get_args(annotation) if arg is not _NoneType)
        return members[0] if len(members) == 1 else Union[members]
    return annotation


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to build the events of one kind whose payload values have one sequence of types."""

    tests: tuple[tuple[int, Callable[[Any], bool]], ...]
    """Payload positions whose values need more than their type checked, and the test."""
    given: frozenset[str]
    """Fields given (the envelope's and the payload's sent ones): pydantic's ``model_fields_set``."""
    restore: tuple[tuple[str, Any], ...]
    """Fields sent as nil whose default is not None (the payload is copied in whole, nils included)."""
    fresh: tuple[tuple[str, Callable[[], Any]], ...]
    """Fields not sent whose default is mutable: a new one per event, as pydantic copies it."""


@dataclass(frozen=True, slots=True)
class _FastKind:
    """A kind's exact checks, and what building an instance without validation needs."""

    model: type[Event]
    template: dict[str, Any]
    """Every field in declaration order with its default (the envelope is filled per message and row)."""
    names: tuple[str, ...]
    """Payload fields in wire order."""
    accepts: tuple[_Accepts | None, ...]
    """What each payload field accepts when sent (None: not covered, always validated)."""
    size: int
    """Number of payload fields."""
    plans: dict[tuple[type, ...], _Plan | None] = field(default_factory=dict)
    """Plans by the types of a row's payload values (None: validate such rows)."""

    def plan(self, kinds: tuple[type, ...]) -> _Plan | None:
        plan = self.plans.get(kinds, False)
        if plan is False:
            plan = self._plan(kinds)
            if len(self.plans) < _MAX_CACHED:
                self.plans[kinds] = plan
        return plan

    def _plan(self, kinds: tuple[type, ...]) -> _Plan | None:
        fields = self.model.model_fields
        tests, given, restore = [], set(_ENVELOPE_GIVEN), []
        for index, (name, accepts, kind) in enumerate(zip(self.names, self.accepts, kinds)):
            if kind is _NoneType:
                default = fields[name].default
                if default is not None:
                    restore.append((name, default))
                continue
            if accepts is None or kind not in accepts.types:
                return None
            if not accepts.plain:
                tests.append((index, _residual(accepts)))
            given.add(name)
        fresh = []
        for name in self.names:
            default = fields[name].default
            if name in given:
                continue
            if default is PydanticUndefined:
                return None  # a required field missing: pydantic says so
            try:
                hash(default)
            except TypeError:
                restore = [(n, d) for n, d in restore if n != name]
                fresh.append((name, type(default) if type(default) in (dict, list) and not default else lambda d=default: copy.deepcopy(d)))
        return _Plan(tuple(tests), frozenset(given), tuple(restore), tuple(fresh))


_STRICT_CONFIG = {"strict": True, "extra": "forbid"}
_NEUTRAL_CONFIG = frozenset({"frozen", "use_attribute_docstrings", "title"})
"""Model settings that change nothing about validation."""


def _fast_kind(model: type[Event]) -> _FastKind | None:
    """The exact checks of a kind, or None when its model has anything they do not cover."""
    config, decorators = model.model_config, model.__pydantic_decorators__
    if (any(config.get(key) != value for key, value in _STRICT_CONFIG.items())
            or not set(config) <= _STRICT_CONFIG.keys() | _NEUTRAL_CONFIG
            or decorators.model_validators or decorators.validators or decorators.root_validators
            or model.__pydantic_post_init__ is not None or model.__private_attributes__):
        return None
    validated = {name for decorator in decorators.field_validators.values() for name in decorator.info.fields}
    names, accepts = [], []
    for name, info in model.model_fields.items():
        if info.default_factory is not None or info.validate_default or info.alias is not None or info.validation_alias is not None:
            return None
        if name in ENVELOPE_FIELDS:
            continue
        names.append(name)
        try:
            accepts.append(None if name in validated else _derive(_given(info.annotation), info.metadata))
        except _NotDerived:
            accepts.append(None)
    template = {name: info.default for name, info in model.model_fields.items()}
    return _FastKind(model, template, tuple(names), tuple(accepts), len(names))


def _envelope(name: str) -> _Accepts | None:
    try:
        return _derive(Event.model_fields[name].annotation, Event.model_fields[name].metadata)
    except _NotDerived:
        return None


_ENVELOPE_GIVEN = frozenset(("schema_version", "run_id", "rank", "session", "seq", "clock_ns", "step"))
"""The fields a decoded event is always given (``kind`` takes its default)."""
_FAST: dict[int, _FastKind] = {spec.code: fast for spec in KINDS.values() if (fast := _fast_kind(spec.model)) is not None}
_MESSAGE_TESTS = tuple(_residual(a) if a is not None and a.types == {t} else None
                       for a, t in zip(map(_envelope, ("run_id", "rank", "session")), (str, int, int)))
"""The tests of a message's run id, rank and session once their types are known (str, int, int)."""
_SEQ, _CLOCK, _STEP = (a.bounds if a is not None and a.types == {int} and a.check is None and a.bounds else None
                       for a in map(_envelope, ("seq", "clock_ns", "step")))
if None in _MESSAGE_TESTS or None in (_SEQ, _CLOCK, _STEP) or not _ENVELOPE_GIVEN | {"kind"} == set(ENVELOPE_FIELDS):
    _FAST = {}  # the envelope changed beyond what the checks cover: validate everything
    _SEQ = _CLOCK = _STEP = (0, -1)
_NO_FAST: dict[int, _FastKind] = {}


def _fast_envelope(run_id: str, rank: int, session: int) -> bool:
    """Whether the rows of a message with this (well-typed) envelope may take the fast path."""
    run_id_ok, rank_ok, session_ok = _MESSAGE_TESTS
    return bool(_FAST) and run_id_ok(run_id) and rank_ok(rank) and session_ok(session)


_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__pydantic_fields_set__.__set__
_set_extra = BaseModel.__pydantic_extra__.__set__
_set_private = BaseModel.__pydantic_private__.__set__


def decode_message(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Decoded:
    """Decode one message from untrusted bytes.

    Raises:
        DecodeError: the whole message is refused (oversized, not msgpack, bad envelope,
            unsupported version). Refused events of an otherwise valid message are returned in
            ``Decoded.errors`` instead, each with its ``index``.
    """
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
    decoded = Decoded()
    events = decoded.events
    fast_kinds = _FAST if _fast_envelope(run_id, rank, session) else _NO_FAST
    bases: dict[int, dict[str, Any]] = {}  # per kind: its template with this message's envelope
    seq_lo, seq_hi, clock_lo, clock_hi, step_lo, step_hi = _SEQ + _CLOCK + _STEP
    for index, row in enumerate(rows):
        # The fast path, written out in the loop (a call per row costs as much as a check).
        if type(row) is list and len(row) >= 4 and type(code := row[0]) is int and (fast := fast_kinds.get(code)) is not None:
            seq, clock_ns, step = row[1], row[2], row[3]
            payload = row[4:]
            if (type(seq) is int and seq_lo <= seq <= seq_hi and type(clock_ns) is int and clock_lo <= clock_ns <= clock_hi
                    and type(step) is int and step_lo <= step <= step_hi and len(payload) <= fast.size):
                kinds = tuple(map(type, payload))
                plan = fast.plans.get(kinds, False)
                if plan is False:
                    plan = fast.plan(kinds)
                if plan is not None:
                    for position, test in plan.tests:
                        if not test(payload[position]):
                            break
                    else:
                        data = bases.get(code)
                        if data is None:
                            data = bases[code] = fast.template.copy()
                            data.update(schema_version=version, run_id=run_id, rank=rank, session=session)
                        data = data.copy()
                        data["seq"], data["clock_ns"], data["step"] = seq, clock_ns, step
                        data.update(zip(fast.names, payload))
                        for name, default in plan.restore:
                            data[name] = default
                        for name, make in plan.fresh:
                            data[name] = make()
                        event = _object_new(fast.model)
                        _set_dict(event, data)
                        _set_fields_set(event, set(plan.given))
                        _set_extra(event, None)
                        _set_private(event, None)
                        events.append(event)
                        continue
        try:
            events.append(_decode_row(version, run_id, rank, session, row))
        except DecodeError as error:
            error.index = index
            decoded.errors.append(error)
    return decoded
