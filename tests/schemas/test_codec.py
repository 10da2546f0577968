"""The msgpack codec: every way bytes are refused, what a refusal costs, and that nothing else escapes."""

from __future__ import annotations

import math
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simic.schemas import (
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    DecodeError,
    Decoded,
    RejectReason,
    decode_message,
    encode_events,
    encode_message,
)
from simic.schemas.codec import KINDS, KINDS_BY_CODE, MAX_EVENTS_PER_MESSAGE, event_row
from simic.schemas.models import MAX_TEXT

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = msgpack.packb([SCHEMA_VERSION, "run-42", 0, 1, [[7, 0, 1, 2]]])
"""A valid message: one heartbeat with no payload."""


def refused(data: bytes, **kwargs) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode_message(data, **kwargs)
    return caught.value


def ext(code: int, data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(code, data)


# Whole-message refusals: crafted bytes -> the reason they must carry.
MESSAGE_CASES = {
    "oversized": (b"\x90" * (MAX_MESSAGE_BYTES + 1), RejectReason.OVERSIZED),
    "empty": (b"", RejectReason.MALFORMED),
    "never-used byte 0xc1": (b"\xc1", RejectReason.MALFORMED),
    "truncated": (VALID[:-1], RejectReason.MALFORMED),
    "truncated mid-string": (VALID[:5], RejectReason.MALFORMED),
    "trailing garbage": (VALID + b"\x00", RejectReason.MALFORMED),
    "two messages glued": (VALID + VALID, RejectReason.MALFORMED),
    "array map key": (msgpack.packb([1, "r", 0, 1, [[3, 0, 1, 2, {(1, 2): 1.0}]]]), RejectReason.MALFORMED),
    "ext type in envelope": (msgpack.packb([1, ext(1, b"x"), 0, 1, []]), RejectReason.MALFORMED),
    "empty ext type": (msgpack.packb([1, ext(5, b""), 0, 1, []]), RejectReason.MALFORMED),
    "ext type in a payload": (msgpack.packb([1, "r", 0, 1, [[7, 0, 1, 2, ext(1, b"\x00" * 8)]]]), RejectReason.MALFORMED),
    "timestamp ext": (msgpack.packb([1, "r", 0, 1, [[7, 0, 1, 2, msgpack.Timestamp(1, 0)]]]), RejectReason.MALFORMED),
    "not an array": (msgpack.packb({"v": 1}), RejectReason.BAD_ENVELOPE),
    "a scalar": (msgpack.packb(1), RejectReason.BAD_ENVELOPE),
    "four items": (msgpack.packb([1, "r", 0, 1]), RejectReason.BAD_ENVELOPE),
    "six items": (msgpack.packb([1, "r", 0, 1, [], None]), RejectReason.BAD_ENVELOPE),
    "version a string": (msgpack.packb(["1", "r", 0, 1, []]), RejectReason.BAD_ENVELOPE),
    "version a bool": (msgpack.packb([True, "r", 0, 1, []]), RejectReason.BAD_ENVELOPE),
    "version a float": (msgpack.packb([1.0, "r", 0, 1, []]), RejectReason.BAD_ENVELOPE),
    "run id as bin": (msgpack.packb([1, b"r", 0, 1, []], use_bin_type=True), RejectReason.BAD_ENVELOPE),
    "run id nil": (msgpack.packb([1, None, 0, 1, []]), RejectReason.BAD_ENVELOPE),
    "rank a string": (msgpack.packb([1, "r", "0", 1, []]), RejectReason.BAD_ENVELOPE),
    "rank a bool": (msgpack.packb([1, "r", False, 1, []]), RejectReason.BAD_ENVELOPE),
    "session a float": (msgpack.packb([1, "r", 0, 1.0, []]), RejectReason.BAD_ENVELOPE),
    "events a map": (msgpack.packb([1, "r", 0, 1, {}]), RejectReason.BAD_ENVELOPE),
    "version 0": (msgpack.packb([0, "r", 0, 1, []]), RejectReason.UNSUPPORTED_VERSION),
    "version -1": (msgpack.packb([-1, "r", 0, 1, []]), RejectReason.UNSUPPORTED_VERSION),
    "next version": (msgpack.packb([SCHEMA_VERSION + 1, "r", 0, 1, []]), RejectReason.UNSUPPORTED_VERSION),
    "huge version": (msgpack.packb([2**64 - 1, "r", 0, 1, []]), RejectReason.UNSUPPORTED_VERSION),
}

# Event-level refusals: a crafted row -> the reason, and a piece of the detail (the field path).
ROW_CASES = {
    "code 0": ([0, 0, 1, 2], RejectReason.UNKNOWN_KIND, "kind code 0"),
    "unassigned code": ([99, 0, 1, 2], RejectReason.UNKNOWN_KIND, "kind code 99"),
    "negative code": ([-1, 0, 1, 2], RejectReason.UNKNOWN_KIND, "kind code -1"),
    "code as kind name": (["heartbeat", 0, 1, 2], RejectReason.UNKNOWN_KIND, "'heartbeat'"),
    "code a bool": ([True, 0, 1, 2], RejectReason.UNKNOWN_KIND, "True"),
    "code a float": ([7.0, 0, 1, 2], RejectReason.UNKNOWN_KIND, "7.0"),
    "row a map": ({"code": 7}, RejectReason.INVALID_EVENT, "event row"),
    "row a scalar": (7, RejectReason.INVALID_EVENT, "event row"),
    "row too short": ([7, 0, 1], RejectReason.INVALID_EVENT, "event row"),
    "too many payload fields": ([7, 0, 1, 2, 1, 2, 3, 4], RejectReason.INVALID_EVENT, "heartbeat has 3 payload fields, got 4"),
    "negative seq": ([7, -1, 1, 2], RejectReason.INVALID_EVENT, "heartbeat.seq"),
    "seq nil": ([7, None, 1, 2], RejectReason.INVALID_EVENT, "heartbeat.seq"),
    "clock beyond int64": ([7, 0, 2**63, 2], RejectReason.INVALID_EVENT, "heartbeat.clock_ns"),
    "required field missing": ([3, 0, 1, 2], RejectReason.INVALID_EVENT, "head_grad_norms.norms"),
    "wrong type": ([7, 0, 1, 2, "ten"], RejectReason.INVALID_EVENT, "heartbeat.sent"),
    "bin for a string field": ([6, 0, 1, 2, b"/trace"], RejectReason.INVALID_EVENT, "profiler_trace.path"),
    "bin map key": ([3, 0, 1, 2, {b"slot": 1.0}], RejectReason.INVALID_EVENT, "head_grad_norms.norms"),
    "integer map key": ([3, 0, 1, 2, {1: 1.0}], RejectReason.INVALID_EVENT, "head_grad_norms.norms"),
    "nil map key deep in config": ([1, 0, 1, 2, "h", 1, 1, None, None, None, {"a": {None: 1}}], RejectReason.INVALID_EVENT, "run_start.config.a"),
    "bin list item": ([1, 0, 1, 2, "h", 1, 1, None, None, [b"slot"]], RejectReason.INVALID_EVENT, "run_start.heads.0"),
    "bin deep in config": ([1, 0, 1, 2, "h", 1, 1, None, None, None, {"a": [{"b": b"x"}]}], RejectReason.INVALID_EVENT, "run_start.config.a"),
    "bin key deep in config": ([1, 0, 1, 2, "h", 1, 1, None, None, None, {"a": {b"k": 1}}], RejectReason.INVALID_EVENT, "run_start.config.a"),
}


class TestMessageRefusals:
    @pytest.mark.parametrize("case", MESSAGE_CASES)
    def test_crafted_bytes_are_refused_with_their_reason(self, case):
        """Each kind of bad message raises a DecodeError whose reason is the one the consumer counts."""
        data, reason = MESSAGE_CASES[case]
        error = refused(data)
        assert error.reason is reason
        assert str(error).startswith(reason.value)

    def test_every_reason_has_a_crafted_input(self):
        """The crafted inputs above produce every RejectReason there is."""
        reasons = {reason for _, reason in MESSAGE_CASES.values()} | {reason for _, reason, _ in ROW_CASES.values()}
        assert reasons == set(RejectReason)

    def test_size_limit_is_checked_before_anything_is_read(self):
        """A message one byte over ``max_bytes`` is oversized even when it is valid msgpack."""
        assert refused(VALID, max_bytes=len(VALID) - 1).reason is RejectReason.OVERSIZED
        assert len(decode_message(VALID, max_bytes=len(VALID)).events) == 1

    def test_unsupported_version_names_the_range(self):
        """An unsupported version says which versions this consumer reads."""
        error = refused(msgpack.packb([SCHEMA_VERSION + 1, "r", 0, 1, []]))
        assert f"1..{SCHEMA_VERSION}" in str(error)

    def test_empty_batch_is_a_valid_message(self):
        """A message with no events decodes to nothing, without errors."""
        assert decode_message(msgpack.packb([1, "r", 0, 1, []])) == Decoded()


class TestEventRefusals:
    @pytest.mark.parametrize("case", ROW_CASES)
    def test_crafted_rows_are_refused_with_their_reason_and_path(self, case, message):
        """Each kind of bad event row is returned as an error with its reason, its index and the field path."""
        bad, reason, detail = ROW_CASES[case]
        decoded = decode_message(message([bad]))
        assert decoded.events == []
        (error,) = decoded.errors
        assert (error.reason, error.index) == (reason, 0)
        assert detail in str(error)

    @pytest.mark.parametrize("case", ["unassigned code", "wrong type", "row a scalar", "bin for a string field", "integer map key"])
    def test_one_bad_event_costs_only_itself(self, case, events, message):
        """A bad row between good ones is refused alone; the good events before and after it are kept in order."""
        rows = [event_row(e) for e in events]
        rows.insert(4, ROW_CASES[case][0])
        decoded = decode_message(message(rows))
        assert decoded.events == events
        assert [e.index for e in decoded.errors] == [4]

    def test_errors_of_several_bad_events_keep_their_indexes(self, message):
        """Every refused row of a message is reported with its own position."""
        rows = [[7, 0, 1, 2], [99, 1, 1, 2], [7, 2, 1, 2], [7, -3, 1, 2], [7, 4, 1, 2]]
        decoded = decode_message(message(rows))
        assert [e.seq for e in decoded.events] == [0, 2, 4]
        assert [(e.index, e.reason) for e in decoded.errors] == [(1, RejectReason.UNKNOWN_KIND), (3, RejectReason.INVALID_EVENT)]

    def test_bad_envelope_values_refuse_every_event_as_invalid(self, message):
        """A negative rank is well-formed msgpack but invalid for every event, each reported apart."""
        decoded = decode_message(message([[7, 0, 1, 2], [7, 1, 1, 2]], rank=-1))
        assert decoded.events == [] and [e.index for e in decoded.errors] == [0, 1]
        assert all("heartbeat.rank" in str(e) for e in decoded.errors)


class TestLengthLimits:
    @pytest.mark.parametrize(
        ("header", "limit"),
        [
            (b"\xdd\xff\xff\xff\xff", "max_array_len"),  # array32 of 4 G items
            (b"\xdf\xff\xff\xff\xff", "max_map_len"),  # map32 of 4 G pairs
            # strings and bins are checked against the bytes present first
            (b"\xdb\xff\xff\xff\xff", "incomplete input"),  # str32 of 4 GiB
            (b"\xc6\xff\xff\xff\xff", "incomplete input"),  # bin32 of 4 GiB
            (b"\xc9\xff\xff\xff\xff\x01", "max_ext_len"),  # ext32 of 4 GiB
        ],
    )
    def test_huge_declared_lengths_are_refused_before_allocating(self, header, limit):
        """A tiny message declaring a huge container is refused by msgpack's length limits, allocating next to nothing."""
        data = b"\x95\x01\xa1r\x00\x01\x91" + header + b"\x00" * 16  # [1, "r", 0, 1, [<huge>]]
        tracemalloc.start()
        try:
            error = refused(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert error.reason is RejectReason.MALFORMED and limit in str(error)
        assert peak < 1 << 20

    def test_longest_text_in_four_byte_utf8_is_accepted(self, row, message):
        """A MAX_TEXT-character alert message of 4-byte characters fits msgpack's string limit."""
        text = "\U0001f525" * MAX_TEXT
        (event,) = decode_message(message([row("alert", rule="r", severity="info", message=text)])).events
        assert event.message == text

    def test_string_longer_than_any_field_is_refused_by_msgpack(self, message):
        """A string of more bytes than the longest text can take refuses the whole message, though under 1 MiB."""
        data = message([[7, 0, 1, 2]], run_id="x" * (MAX_TEXT * 4 + 1))
        assert len(data) < MAX_MESSAGE_BYTES
        assert "max_str_len" in str(refused(data))

    def test_too_many_events_in_one_message_are_refused(self):
        """A message of more than MAX_EVENTS_PER_MESSAGE rows is malformed."""
        ok = msgpack.packb([1, "r", 0, 1, [[7, i, 1, 2] for i in range(MAX_EVENTS_PER_MESSAGE)]])
        assert len(decode_message(ok).events) == MAX_EVENTS_PER_MESSAGE
        too_many = msgpack.packb([1, "r", 0, 1, [[7, i, 1, 2] for i in range(MAX_EVENTS_PER_MESSAGE + 1)]])
        assert refused(too_many).reason is RejectReason.MALFORMED

    def test_deep_nesting_is_refused_without_recursion_error(self, message):
        """Thousands of nested arrays are a DecodeError, never a RecursionError."""
        data = msgpack.packb([1, "r", 0, 1, []])[:-1] + b"\x91" * 5000 + b"\x90"
        assert isinstance(refused(data), DecodeError)


class TestEncoding:
    def test_default_values_travel_as_nil_and_trailing_nils_are_left_off(self, make):
        """A field equal to its default is sent as nil, and nils at the end of a row are not sent at all."""
        assert event_row(make("head_grad_norms", norms={"a": 1.0}, stage="pre_clip")) == [3, 0, 1_000_000, 7, {"a": 1.0}, None, None, None, None, "pre_clip"]
        assert event_row(make("heartbeat")) == [7, 0, 1_000_000, 7]

    def test_nan_is_sent_even_where_it_equals_nothing(self, make):
        """A NaN value is sent, never mistaken for its default."""
        row = event_row(make("lstm_health", h_norm=math.nan))
        assert math.isnan(row[4])

    def test_events_of_different_sessions_cannot_share_a_message(self, make):
        """encode_events refuses events with different envelopes, and an empty list."""
        a = make("heartbeat")
        b = a.model_copy(update={"session": 1})
        with pytest.raises(ValueError):
            encode_events([a, b])
        with pytest.raises(ValueError):
            encode_events([])

    def test_encode_message_with_a_reused_packer_matches_packb(self, events):
        """Packing through a reusable Packer gives the same bytes as a one-off packb."""
        rows = [event_row(e) for e in events]
        packer = msgpack.Packer()
        assert encode_message("run-42", 3, 123456789, rows, packer=packer) == encode_message("run-42", 3, 123456789, rows)

    def test_codes_name_kinds_both_ways(self):
        """Every kind code maps back to its kind."""
        assert {spec.code: kind for kind, spec in KINDS.items()} == {code: spec.kind for code, spec in KINDS_BY_CODE.items()}


# -- properties ------------------------------------------------------------------------------------

names = st.text(min_size=1, max_size=12)
floats = st.floats(allow_nan=True, allow_infinity=True)
opt_floats = st.none() | floats
counts = st.integers(0, 2**63 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | int64 | floats | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=12,
)
small_dict = lambda values: st.dictionaries(names, values, max_size=6)  # noqa: E731

PAYLOADS = {
    "run_start": st.fixed_dictionaries(
        {"host": names, "pid": counts},
        optional={
            "world_size": st.integers(1, 2**31 - 1), "torch_version": st.none() | names, "device": st.none() | st.text(max_size=30),
            "heads": st.lists(names, max_size=6), "config": small_dict(json_values), "producer_version": st.none() | names,
        },
    ),
    "step_timing": st.fixed_dictionaries({"phases_ms": small_dict(floats)}, optional={"clock": st.sampled_from(["cpu", "cuda_event"])}),
    "head_grad_norms": st.fixed_dictionaries(
        {"norms": small_dict(opt_floats)},
        optional={
            "total": opt_floats, "pre_clip_total": opt_floats, "post_clip_total": opt_floats, "nonfinite": small_dict(counts),
            "stage": st.sampled_from([None, "pre_clip", "post_clip"]), "max_norm": opt_floats,
            "samples": st.none() | counts,
        },
    ),
    "lstm_health": st.fixed_dictionaries(
        {},
        optional={
            **{name: opt_floats for name in ("h_norm", "c_norm", "h_rms", "c_rms", "h_max_abs", "c_max_abs", "h_env_max_rms", "c_env_max_rms")},
            "has_nan": st.none() | st.booleans(), "has_inf": st.none() | st.booleans(),
            "layer_h_rms": st.lists(floats, max_size=4), "layer_c_rms": st.lists(floats, max_size=4), "envs": st.none() | counts,
            "name": st.none() | names,
        },
    ),
    "ppo_update": st.fixed_dictionaries(
        {},
        optional={
            **{name: opt_floats for name in ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "ratio_min", "ratio_max", "explained_variance", "learning_rate", "clip_range", "loss")},
            "entropy": small_dict(floats),
        },
    ),
    "profiler_trace": st.fixed_dictionaries({"path": st.text(max_size=40)}, optional={"format": names}),
    "heartbeat": st.fixed_dictionaries({}, optional={"sent": st.none() | counts, "dropped": st.none() | counts}),
    "run_end": st.fixed_dictionaries(
        {},
        optional={
            "status": st.sampled_from(["ok", "error", "interrupted", "exit"]), "sent": st.none() | counts,
            "dropped": st.none() | counts, "error": st.none() | st.text(max_size=40),
        },
    ),
    "alert": st.fixed_dictionaries(
        {"rule": names, "severity": st.sampled_from(["info", "warning", "critical"]), "message": st.text(max_size=40)},
        optional={"values": small_dict(st.none() | st.booleans() | int64 | floats | st.text(max_size=10)), "cleared": st.booleans(),
                  "received_at": opt_floats},
    ),
    "metrics": st.fixed_dictionaries({"values": small_dict(opt_floats)}),
    "episodes": st.fixed_dictionaries(
        {}, optional={"returns": st.lists(floats, max_size=4), "lengths": st.lists(counts, max_size=4), "count": st.none() | counts},
    ),
    "param_updates": st.fixed_dictionaries(
        {"ratios": small_dict(opt_floats)},
        optional={
            "update_norms": small_dict(opt_floats), "param_norms": small_dict(opt_floats), "total_ratio": opt_floats,
            "samples": st.none() | counts, "learning_rate": opt_floats,
        },
    ),
    "delivery_receipt": st.fixed_dictionaries({"received": counts}, optional={"lost": counts}),
}


@st.composite
def valid_messages(draw):
    """Events of random kinds and values sharing one envelope."""
    envelope = {"run_id": draw(names), "rank": draw(st.integers(0, 2**31 - 1)), "session": draw(st.integers(0, 2**63 - 1))}
    events = []
    for seq, kind in enumerate(draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=5))):
        payload = draw(PAYLOADS[kind])
        events.append(KINDS[kind].model(**envelope, seq=seq, clock_ns=draw(int64), step=draw(int64), **payload))
    return events


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def near_valid_messages(draw):
    """Messages shaped like the real thing (envelope, rows with real codes) holding random values."""
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        code = draw(st.sampled_from([*KINDS_BY_CODE, 0, 10]))
        head = [draw(st.integers(-1, 2**63) | msgpack_values) for _ in range(3)]
        rows.append([code, *head, *draw(st.lists(msgpack_values, max_size=12))])
    version = draw(st.sampled_from([0, 1, SCHEMA_VERSION, SCHEMA_VERSION + 1]) | msgpack_values)
    envelope = [version, draw(names | msgpack_values), draw(st.integers(-1, 2**31) | msgpack_values), draw(st.integers(-1, 2**63) | msgpack_values)]
    return msgpack.packb([*envelope, rows], use_bin_type=True)


def decodes_or_refuses(data: bytes) -> None:
    """decode_message returns a Decoded whose errors are DecodeErrors, or raises a DecodeError: nothing else."""
    try:
        decoded = decode_message(data)
    except DecodeError as error:
        assert isinstance(error.reason, RejectReason)
        str(error)
        return
    assert isinstance(decoded, Decoded)
    for error in decoded.errors:
        assert isinstance(error, DecodeError) and isinstance(error.index, int)
        str(error)


class TestProperties:
    @FUZZ
    @given(st.binary(max_size=300))
    @example(b"\x95\x01\xa1r\x00\x01\x91\x94\x07\x00\x01\x02")
    def test_arbitrary_bytes_never_raise_anything_but_decode_error(self, data):
        """Whatever bytes arrive, decoding either returns or raises DecodeError."""
        decodes_or_refuses(data)

    @FUZZ
    @given(msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)))
    def test_arbitrary_msgpack_never_raises_anything_but_decode_error(self, data):
        """Any well-formed msgpack value decodes or is refused with a DecodeError."""
        decodes_or_refuses(data)

    @FUZZ
    @given(near_valid_messages())
    def test_messages_shaped_right_with_random_values_never_raise_otherwise(self, data):
        """Real envelopes and kind codes carrying random values decode or are refused with DecodeErrors only."""
        decodes_or_refuses(data)

    @FUZZ
    @given(sent=valid_messages(), data=st.data())
    def test_bit_flips_and_truncations_of_valid_messages_never_raise_otherwise(self, sent, data):
        """Valid messages with flipped bits, cut short or with bytes dropped decode or are refused, nothing else."""
        message = bytearray(encode_events(sent))
        for _ in range(data.draw(st.integers(1, 4))):
            bit = data.draw(st.integers(0, len(message) * 8 - 1))
            message[bit // 8] ^= 1 << (bit % 8)
        decodes_or_refuses(bytes(message))
        cut = data.draw(st.integers(0, len(message)))
        decodes_or_refuses(bytes(message[:cut]))
        start = data.draw(st.integers(0, len(message)))
        decodes_or_refuses(bytes(message[:start] + message[start + 1 :]))

    @settings(max_examples=150, deadline=None)
    @given(sent=valid_messages())
    def test_valid_events_round_trip(self, sent, same_as):
        """Any valid events encode and decode back equal (NaN for NaN)."""
        decoded = decode_message(encode_events(sent))
        assert decoded.errors == []
        assert len(decoded.events) == len(sent)
        for got, event in zip(decoded.events, sent):
            assert same_as(got, event), (got, event)
