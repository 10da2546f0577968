"""The codec's fast path (rows built without pydantic) decodes exactly as validation does: the same
events (field values and their exact types, defaults, the set of given fields) and the same refused
events with the same reasons and details. Rows are valid rows of every kind (the frozen wire
fixture) with a few values replaced by boundary values and wrong types."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simic.schemas import codec
from simic.schemas.codec import DecodeError, decode_message

FIXTURE = Path(__file__).parent / "fixtures" / "wire_v1.msgpack"
VALID = msgpack.unpackb(FIXTURE.read_bytes())
"""[version, run_id, rank, session, rows]: a valid row of every kind."""

INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**63 - 1, -(2**63), 2**63, 2**64 - 1]
TEXT = ["", "a", "x" * 128, "x" * 129, "y" * 4096, "y" * 4097, "pre_clip", "post_clip", "cpu", "cuda_event", "ok", "exit", "critical"]
odd = st.one_of(
    st.none(), st.booleans(), st.sampled_from(INTS), st.floats(), st.sampled_from(TEXT), st.binary(max_size=2),
    st.just([]), st.just({}), st.lists(st.floats() | st.sampled_from(INTS) | st.sampled_from(TEXT), max_size=3),
    st.dictionaries(st.sampled_from(TEXT), st.floats() | st.none() | st.sampled_from(INTS) | st.booleans(), max_size=3),
)


@st.composite
def mutated(draw, value):
    """``value`` with, at some depth, one part replaced by an odd value (or a key of a mapping replaced)."""
    if isinstance(value, list) and value and draw(st.booleans()):
        index = draw(st.integers(0, len(value) - 1))
        value[index] = draw(mutated(value[index]))
        return value
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        if draw(st.booleans()):
            value[key] = draw(mutated(value[key]))
        else:
            value[draw(st.sampled_from(TEXT))] = value.pop(key)
        return value
    return draw(odd)


@st.composite
def rows(draw):
    row = copy.deepcopy(draw(st.sampled_from(VALID[4])))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["mutate", "mutate", "truncate", "extend"]))
        if action == "truncate" and len(row) > 4:
            del row[draw(st.integers(4, len(row) - 1)):]
        elif action == "extend":
            row.append(draw(odd))
        else:
            index = draw(st.integers(1, len(row) - 1))
            row[index] = draw(mutated(row[index]))
    return row


def same(a, b) -> bool:
    """Equal, with the same exact types all the way down, in the same order (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, set, frozenset)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(sorted(a) if isinstance(a, (set, frozenset)) else a,
                                                                     sorted(b) if isinstance(b, (set, frozenset)) else b))
    return a == b


def assert_decodes_as_validation(data: bytes, monkeypatch) -> int:
    """Decode with and without the fast path; returns how many events the fast path built."""
    validated_rows = 0
    validate_row = codec._decode_row

    def counting(*args):
        nonlocal validated_rows
        event = validate_row(*args)
        validated_rows += 1
        return event

    with monkeypatch.context() as patch:
        patch.setattr(codec, "_FAST", {})
        try:
            want = decode_message(data)
        except DecodeError as error:
            want = error
    with monkeypatch.context() as patch:
        patch.setattr(codec, "_decode_row", counting)
        try:
            got = decode_message(data)
        except DecodeError as error:
            got = error
    if isinstance(want, DecodeError):
        assert isinstance(got, DecodeError) and (got.reason, str(got)) == (want.reason, str(want))
        return 0
    assert [(e.index, e.reason, str(e)) for e in got.errors] == [(e.index, e.reason, str(e)) for e in want.errors]
    assert len(got.events) == len(want.events)
    for a, b in zip(got.events, want.events):
        assert type(a) is type(b)
        assert same(a.__dict__, b.__dict__), (a, b)
        assert same(a.__pydantic_fields_set__, b.__pydantic_fields_set__)
        assert (a.__pydantic_extra__, a.__pydantic_private__) == (b.__pydantic_extra__, b.__pydantic_private__)
        assert a.model_dump_json() == b.model_dump_json()
    return len(got.events) - (validated_rows - len(got.errors))


def pack(body) -> bytes | None:
    try:
        return msgpack.packb(body)
    except (OverflowError, ValueError, TypeError):
        return None


class TestFastPathIsExact:
    def test_the_fixture_is_built_by_the_fast_path(self, monkeypatch):
        """Every valid row of the fixture but the run_start that sends a config (a field with a validator: left to pydantic)."""
        built = assert_decodes_as_validation(FIXTURE.read_bytes(), monkeypatch)
        assert built == len(VALID[4]) - 1

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.lists(rows(), min_size=1, max_size=4), envelope=st.lists(st.integers(1, 3), max_size=1), value=odd)
    def test_mutated_rows_decode_as_validation_decodes_them(self, monkeypatch, body, envelope, value):
        """Thousands of near-valid messages: the fast path builds some rows, pydantic the others, and the result is the same."""
        message = [VALID[0], VALID[1], VALID[2], VALID[3], body]
        for index in envelope:  # now and then an odd run id, rank or session
            message[index] = value
        data = pack(message)
        if data is not None:
            assert_decodes_as_validation(data, monkeypatch)
