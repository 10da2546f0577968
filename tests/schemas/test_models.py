"""The event models as a contract: what round-trips, what stays missing, what is refused."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from simic.schemas import EVENT_TYPES, SCHEMA_VERSION, HeadGradNorms, LstmHealth, RejectReason, decode_message, encode_events
from simic.schemas.codec import KINDS
from simic.schemas.models import MAX_DEPTH, MAX_ITEMS, MAX_NAME, iter_numbers

ALL_KINDS = [t.model_fields["kind"].default for t in EVENT_TYPES]
SPECIALS = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}


def round_trip(events):
    decoded = decode_message(encode_events(events))
    assert decoded.errors == []
    return decoded.events


def replace_floats(value: Any, special: float) -> Any:
    """``value`` with every float in it (at any depth) replaced by ``special``."""
    if isinstance(value, float):
        return special
    if isinstance(value, dict):
        return {key: replace_floats(item, special) for key, item in value.items()}
    if isinstance(value, list):
        return [replace_floats(item, special) for item in value]
    return value


def nested(levels: int) -> dict[str, Any]:
    """A dict ``levels`` containers deep (counting itself) with a number at the bottom."""
    value: Any = 1
    for _ in range(levels):
        value = {"k": value}
    return value


def only_error(data: bytes):
    decoded = decode_message(data)
    assert decoded.events == [] and len(decoded.errors) == 1
    return decoded.errors[0]


class TestRoundTrip:
    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_rich_event_of_each_kind_round_trips_equal(self, kind, make, payloads):
        """An event of every kind with every field set decodes equal to what was encoded."""
        event = make(kind, **payloads()[kind])
        assert round_trip([event]) == [event]

    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_minimal_event_of_each_kind_round_trips_with_defaults(self, kind, make, minimal):
        """An event with only its required fields decodes equal, its other fields at their defaults."""
        event = make(kind, **minimal()[kind])
        assert round_trip([event]) == [event]

    def test_events_of_every_kind_share_one_message_in_order(self, events):
        """A message holding one event of every kind decodes to all of them, in order."""
        assert round_trip(events) == events

    def test_every_kind_is_covered_by_the_examples(self, payloads, minimal):
        """The examples name every kind and every payload field, so the round trips cover the whole schema."""
        rich = payloads()
        assert set(rich) == set(KINDS) == set(minimal())
        for kind, spec in KINDS.items():
            assert set(rich[kind]) == set(spec.fields), kind

    def test_envelope_travels_once_and_reaches_every_event(self, events):
        """Run id, rank, session and schema version come back on every decoded event."""
        for event in round_trip(events):
            assert (event.run_id, event.rank, event.session, event.schema_version) == ("run-42", 3, 123456789, SCHEMA_VERSION)


class TestNonFinite:
    @pytest.mark.parametrize("name", SPECIALS)
    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_nan_and_inf_survive_in_every_float_field(self, kind, name, make, payloads, same_as):
        """NaN, +Inf and -Inf in float fields, mapping values and list items are data and come back as sent."""
        special = SPECIALS[name]
        payload = replace_floats(payloads()[kind], special)
        event = make(kind, **payload)
        (back,) = round_trip([event])
        assert same_as(back, event)
        for (path, sent), (back_path, got) in zip(iter_numbers(event), iter_numbers(back), strict=True):
            assert path == back_path
            assert math.isnan(got) if math.isnan(special) else got == special, path

    def test_specials_reach_scalar_mapping_and_list_floats(self, make, payloads):
        """The NaN examples cover each shape a float can take in a payload: field, mapping value, list item."""
        shapes = set()
        for kind, payload in payloads().items():
            for path, _ in iter_numbers(make(kind, **payload)):
                shapes.add("list" if "[" in path else "mapping" if "." in path else "field")
        assert shapes == {"field", "mapping", "list"}

    def test_nan_in_free_form_config_survives(self, make):
        """A NaN nested inside the free-form run configuration comes back as NaN."""
        event = make("run_start", host="h", pid=1, config={"a": {"b": [math.nan, math.inf]}})
        (back,) = round_trip([event])
        nan, inf = back.config["a"]["b"]
        assert math.isnan(nan) and inf == math.inf


class TestMissingValues:
    def test_missing_head_norm_stays_none(self, make):
        """A head without a gradient decodes as None, never 0.0."""
        (back,) = round_trip([make("head_grad_norms", norms={"slot": 0.0, "op": None})])
        assert back.norms == {"slot": 0.0, "op": None}
        assert back.norms["op"] is None and back.total is None

    def test_unsent_optional_fields_decode_as_none(self, row, message):
        """A row that leaves optional floats out (or sends nil) decodes them as None, not 0.0."""
        data = message([row("lstm_health", h_norm=None, c_norm=2.0), row("head_grad_norms", norms={"op": None})])
        lstm, heads = decode_message(data).events
        assert lstm.h_norm is None and lstm.c_norm == 2.0 and lstm.h_rms is None and lstm.has_nan is None
        assert heads.norms == {"op": None} and heads.total is None and heads.max_norm is None

    def test_a_field_equal_to_zero_is_not_taken_for_missing(self, make):
        """0.0 and False are values: they round-trip as themselves, distinct from None."""
        event = make("lstm_health", h_norm=0.0, has_nan=False, envs=0)
        (back,) = round_trip([event])
        assert (back.h_norm, back.has_nan, back.envs) == (0.0, False, 0)
        assert back.c_norm is None


class TestStrictTyping:
    @pytest.mark.parametrize(
        ("kind", "fields", "path"),
        [
            ("run_start", dict(host="h", pid=True), "pid"),
            ("run_start", dict(host="h", pid=1, world_size=True), "world_size"),
            ("head_grad_norms", dict(norms={"slot": True}), "norms.slot"),
            ("head_grad_norms", dict(norms={}, total=False), "total"),
            ("head_grad_norms", dict(norms={}, nonfinite={"slot": True}), "nonfinite.slot"),
            ("lstm_health", dict(envs=True), "envs"),
        ],
    )
    def test_bool_is_not_a_number(self, kind, fields, path, row, message):
        """A bool where an int or float is declared is refused with the field's path."""
        error = only_error(message([row(kind, **fields)]))
        assert error.reason is RejectReason.INVALID_EVENT
        assert f"{kind}.{path}" in str(error)

    @pytest.mark.parametrize(
        ("kind", "fields", "path"),
        [
            ("head_grad_norms", dict(norms={"slot": "1.0"}), "norms.slot"),
            ("lstm_health", dict(h_norm="nan"), "h_norm"),
            ("step_timing", dict(phases_ms={"update": "3"}), "phases_ms.update"),
            ("run_start", dict(host="h", pid="1"), "pid"),
            ("run_start", dict(host=5, pid=1), "host"),
            ("lstm_health", dict(has_nan=1), "has_nan"),
            ("lstm_health", dict(envs=1.0), "envs"),
        ],
    )
    def test_strings_are_not_numbers_and_numbers_not_strings(self, kind, fields, path, row, message):
        """A string where a number is declared (and the reverse, or 1 for a bool) is refused with the field's path."""
        error = only_error(message([row(kind, **fields)]))
        assert error.reason is RejectReason.INVALID_EVENT
        assert f"{kind}.{path}" in str(error)

    def test_envelope_numbers_in_rows_are_strict(self, row, message):
        """A row whose seq is a bool or whose step is a float is refused."""
        bad_seq = row("heartbeat")
        bad_seq[1] = True
        bad_step = row("heartbeat", step=7.0)
        decoded = decode_message(message([bad_seq, bad_step]))
        assert decoded.events == []
        assert ["heartbeat.seq" in str(e) for e in decoded.errors] == [True, False]
        assert "heartbeat.step" in str(decoded.errors[1])

    def test_an_integer_for_a_float_field_is_that_float(self, row, message):
        """An integer sent for a float field is accepted and decoded as a float."""
        (event,) = decode_message(message([row("step_timing", phases_ms={"update": 3})])).events
        assert event.phases_ms == {"update": 3.0} and type(event.phases_ms["update"]) is float

    def test_alert_values_keep_their_own_types(self, make):
        """An alert's values keep bool, int, float, str and None apart through a round trip."""
        values = {"flag": True, "count": 3, "ratio": 3.0, "head": "slot", "none": None}
        (back,) = round_trip([make("alert", rule="r", severity="info", message="m", values=values)])
        assert [type(v) for v in back.values.values()] == [bool, int, float, str, type(None)]

    def test_models_refuse_wrong_types_when_built_in_python(self, make):
        """Building a model by hand is as strict as decoding: a bool norm is a ValidationError."""
        with pytest.raises(ValidationError):
            make("head_grad_norms", norms={"slot": True})
        with pytest.raises(ValidationError):
            LstmHealth(run_id="r", rank=0, session=0, seq=0, clock_ns=0, step=0, h_norm="1")


class TestLimits:
    def test_long_run_id_is_refused_with_its_path(self, row, message):
        """A run id longer than MAX_NAME characters refuses the event, naming run_id."""
        error = only_error(message([row("heartbeat")], run_id="r" * (MAX_NAME + 1)))
        assert error.reason is RejectReason.INVALID_EVENT and "heartbeat.run_id" in str(error)

    def test_name_of_max_length_is_accepted(self, row, message):
        """A run id and head name of exactly MAX_NAME characters are accepted."""
        data = message([row("head_grad_norms", norms={"h" * MAX_NAME: 1.0})], run_id="r" * MAX_NAME)
        assert len(decode_message(data).events) == 1

    def test_long_head_name_is_refused_with_its_path(self, row, message):
        """A head name (mapping key) longer than MAX_NAME characters refuses the event, naming norms."""
        error = only_error(message([row("head_grad_norms", norms={"h" * (MAX_NAME + 1): 1.0})]))
        assert error.reason is RejectReason.INVALID_EVENT and "head_grad_norms.norms" in str(error)

    def test_empty_name_is_refused(self, row, message):
        """An empty host name is refused (names have at least one character)."""
        error = only_error(message([row("run_start", host="", pid=1)]))
        assert "run_start.host" in str(error)

    @pytest.mark.parametrize(
        ("kind", "field", "make_value"),
        [
            ("run_start", "heads", lambda n: [f"h{i}" for i in range(n)]),
            ("head_grad_norms", "norms", lambda n: {f"h{i}": 1.0 for i in range(n)}),
            ("lstm_health", "layer_h_rms", lambda n: [0.5] * n),
            ("alert", "values", lambda n: {f"v{i}": i for i in range(n)}),
            ("run_start", "config", lambda n: {f"k{i}": i for i in range(n)}),
        ],
    )
    def test_too_many_items_are_refused_with_the_field_path(self, kind, field, make_value, row, message, minimal):
        """A list or mapping of more than MAX_ITEMS entries refuses the event, naming the field; MAX_ITEMS is fine."""
        base = minimal()[kind]
        ok = decode_message(message([row(kind, **{**base, field: make_value(MAX_ITEMS)})]))
        assert len(ok.events) == 1
        error = only_error(message([row(kind, **{**base, field: make_value(MAX_ITEMS + 1)})]))
        assert error.reason is RejectReason.INVALID_EVENT and f"{kind}.{field}" in str(error)

    def test_config_nested_deeper_than_the_limit_is_refused(self, row, message):
        """Free-form config more than MAX_DEPTH containers deep refuses the event, naming config; MAX_DEPTH is fine."""
        ok = decode_message(message([row("run_start", host="h", pid=1, config=nested(MAX_DEPTH))]))
        assert len(ok.events) == 1
        error = only_error(message([row("run_start", host="h", pid=1, config=nested(MAX_DEPTH + 1))]))
        assert error.reason is RejectReason.INVALID_EVENT and "run_start.config" in str(error)
        assert f"deeper than {MAX_DEPTH}" in str(error)

    def test_long_text_is_refused(self, row, message):
        """An alert message over MAX_TEXT characters is refused, naming message."""
        error = only_error(message([row("alert", rule="r", severity="info", message="m" * 4097)]))
        assert "alert.message" in str(error)

    def test_unknown_literal_is_refused(self, row, message):
        """A run_end status outside its choices is refused, naming status."""
        error = only_error(message([row("run_end", status="crashed")]))
        assert "run_end.status" in str(error)


class TestModelShape:
    def test_payload_fields_follow_declaration_order(self):
        """A kind's wire order is its declaration order, envelope fields excluded."""
        assert HeadGradNorms.payload_fields()[:3] == ("norms", "total", "pre_clip_total")
        for model in EVENT_TYPES:
            assert not {"kind", "seq", "run_id"} & set(model.payload_fields())

    def test_events_are_frozen(self, make):
        """A decoded event cannot be changed in place."""
        event = make("heartbeat")
        with pytest.raises(ValidationError):
            event.sent = 3

    def test_extra_fields_are_refused(self, make):
        """A field a kind does not declare is an error, not silently dropped."""
        with pytest.raises(ValidationError):
            make("heartbeat", bogus=1)
