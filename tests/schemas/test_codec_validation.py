"""Decoding is the models' own validation: for any row, ``decode_message`` gives exactly the event that
``Model.model_validate`` makes of the fields the row sends (values and their exact types, defaults, the
set of given fields), and refuses exactly the rows it refuses, naming the same field. Rows are valid
rows of every kind (the frozen wire fixtures) with a few values replaced by boundary values and wrong
types; then the edges the decoder itself decides: nil, defaults, extra values."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from simic.schemas import RejectReason
from simic.schemas.codec import KINDS, KINDS_BY_CODE, DecodeError, decode_message

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("wire_v*.msgpack"))
VALID_ROWS = [row for path in FIXTURES for row in msgpack.unpackb(path.read_bytes())[4]]
"""Valid rows of every kind, as frozen versions sent them."""
ENVELOPE = msgpack.unpackb(FIXTURES[-1].read_bytes())[:4]

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
    row = copy.deepcopy(draw(st.sampled_from(VALID_ROWS)))
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
    """Equal, with the same exact types all the way down, in the same order (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, set, frozenset)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(sorted(a) if isinstance(a, (set, frozenset)) else a,
                                                                     sorted(b) if isinstance(b, (set, frozenset)) else b))
    return a == b


def reference(version, run_id, rank, session, row):
    """What ``model_validate`` makes of a row's sent fields: the event, or (reason, the first error's path)."""
    if type(row) is not list or len(row) < 4:
        return RejectReason.INVALID_EVENT, "event row"
    spec = KINDS_BY_CODE.get(row[0]) if type(row[0]) is int else None
    if spec is None:
        return RejectReason.UNKNOWN_KIND, f"kind code {row[0]!r}"
    if len(row) - 4 > len(spec.fields):
        return RejectReason.INVALID_EVENT, "payload fields"
    fields = dict(schema_version=version, run_id=run_id, rank=rank, session=session, seq=row[1], clock_ns=row[2], step=row[3])
    fields.update((name, value) for name, value in zip(spec.fields, row[4:]) if value is not None)
    try:
        return spec.model.model_validate(fields)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        return RejectReason.INVALID_EVENT, f"{spec.kind}.{'.'.join(map(str, first['loc']))}: {first['msg']}"


def assert_decodes_as_the_models_validate(message: list) -> None:
    try:
        decoded = decode_message(msgpack.packb(message))
    except DecodeError:
        return  # a whole-message refusal: the envelope's checks, covered in test_codec.py
    errors = {error.index: error for error in decoded.errors}
    events = iter(decoded.events)
    for index, row in enumerate(message[4]):
        want = reference(*message[:4], row)
        if isinstance(want, tuple):
            reason, detail = want
            assert index in errors, f"row {index} {row!r:.200} is refused by the models, decoded"
            assert errors[index].reason is reason and detail[:200] in str(errors[index])  # long details are cut at 500
            continue
        assert index not in errors, f"row {index} {row!r:.200} is valid for the models, refused: {errors[index]}"
        got = next(events)
        assert type(got) is type(want)
        assert same(got.__dict__, want.__dict__), (got, want)
        assert got.model_fields_set == want.model_fields_set
        assert got.model_dump_json() == want.model_dump_json()
    assert next(events, None) is None


def pack(body) -> bytes | None:
    try:
        return msgpack.packb(body)
    except (OverflowError, ValueError, TypeError):
        return None


class TestDecodingIsTheModelsValidation:
    def test_every_fixture_row_decodes_as_the_models_validate_it(self):
        """Each row of every frozen version is the event model_validate makes of it."""
        assert_decodes_as_the_models_validate([*ENVELOPE, VALID_ROWS])

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.lists(rows(), min_size=1, max_size=4), envelope=st.lists(st.integers(1, 3), max_size=1), value=odd)
    def test_mutated_rows_decode_as_the_models_validate_them(self, body, envelope, value):
        """Thousands of near-valid messages: every accepted event and every refusal is the models' own."""
        message = [*ENVELOPE, body]
        for index in envelope:  # now and then an odd run id, rank or session
            message[index] = value
        if pack(message) is not None:
            assert_decodes_as_the_models_validate(message)


class TestDecodedDefaults:
    def test_fields_set_are_the_envelope_and_the_sent_fields(self, row, message):
        """An event's model_fields_set holds the envelope (not kind, which nothing sends) and the payload fields sent, nil ones left out."""
        (event,) = decode_message(message([row("head_grad_norms", norms={"slot": 1.0}, total=None, stage="pre_clip")])).events
        assert event.model_fields_set == {"schema_version", "run_id", "rank", "session", "seq", "clock_ns", "step", "norms", "stage"}

    def test_unsent_lists_and_mappings_are_new_for_every_event(self, row, message):
        """Two events that leave a list or mapping out get an empty one each, shared with nothing."""
        data = message([row("lstm_health"), row("lstm_health", seq=1), row("head_grad_norms", norms={}), row("head_grad_norms", seq=1, norms={})])
        first, second, heads, more_heads = decode_message(data).events
        assert first.layer_h_rms == [] and first.layer_h_rms is not second.layer_h_rms
        assert heads.nonfinite == {} and heads.nonfinite is not more_heads.nonfinite
        first.layer_h_rms.append(1.0)  # a frozen model's list is still a list: nobody else may see this
        built = KINDS["lstm_health"].model(run_id="r", rank=0, session=0, seq=0, clock_ns=0, step=0)
        assert second.layer_h_rms == [] and built.layer_h_rms == []

    def test_nil_for_a_field_with_a_default_takes_that_default(self, row, message):
        """nil is "not sent" even where the default is not None: the clock stays cpu, the status ok, the heads empty."""
        data = message([row("step_timing", phases_ms={}, clock=None), row("run_end", status=None, sent=3),
                        row("run_start", host="h", pid=1, world_size=None, heads=None)])
        timing, end, start = decode_message(data).events
        assert (timing.clock, end.status, end.sent, start.world_size, start.heads) == ("cpu", "ok", 3, 1, [])

    def test_nil_for_a_required_field_is_a_missing_field(self, row, message):
        """A required field sent as nil is refused as missing, with its path."""
        decoded = decode_message(message([row("head_grad_norms", norms=None, total=1.0)]))
        assert decoded.events == [] and "head_grad_norms.norms: Field required" in str(decoded.errors[0])

    def test_a_value_beyond_the_kinds_fields_is_refused_not_dropped(self, row, message):
        """A row with one value more than its kind declares (a newer producer's field) is refused whole."""
        decoded = decode_message(message([row("heartbeat", sent=1, dropped=0, readouts_dropped=0) + [5], row("heartbeat", seq=1)]))
        assert [e.seq for e in decoded.events] == [1]
        assert (decoded.errors[0].index, decoded.errors[0].reason) == (0, RejectReason.INVALID_EVENT)
        assert "heartbeat has 3 payload fields, got 4" in str(decoded.errors[0])

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308])
    def test_special_floats_arrive_as_sent_in_fields_mappings_and_lists(self, value, row, message):
        """NaN, the infinities, negative zero and the extreme floats reach the event bit for bit, wherever they sit."""
        data = message([row("lstm_health", h_norm=value, layer_h_rms=[value]), row("head_grad_norms", norms={"slot": value})])
        lstm, heads = decode_message(data).events
        for got in (lstm.h_norm, lstm.layer_h_rms[0], heads.norms["slot"]):
            assert type(got) is float and same(got, value)
