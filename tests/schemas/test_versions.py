"""Schema evolution: frozen wire fixtures of every version decode with today's code (rules 1-4)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import PydanticUndefined

from simic.schemas import EVENT_TYPES, SCHEMA_VERSION, DecodeError, RejectReason, decode_message, encode_events
from simic.schemas.codec import KINDS, event_row

FIXTURES = Path(__file__).parent / "fixtures"
WIRE_FIXTURES = sorted(FIXTURES.glob("wire_v*.msgpack"))
FLOAT_MARKERS = {"__float_nan__": math.nan, "__float_+inf__": math.inf, "__float_-inf__": -math.inf}
ALL_KINDS = [t.model_fields["kind"].default for t in EVENT_TYPES]


def version_of(path: Path) -> int:
    return int(re.fullmatch(r"wire_v(\d+)\.msgpack", path.name).group(1))


def from_json(value: Any) -> Any:
    """Expected JSON with the non-finite float markers turned back into floats."""
    if isinstance(value, str) and value in FLOAT_MARKERS:
        return FLOAT_MARKERS[value]
    if isinstance(value, dict):
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def load_expected(wire: Path) -> dict[str, Any]:
    return from_json(json.loads(wire.with_name(wire.name.replace(".msgpack", ".expected.json")).read_text()))


def default_of(kind: str, name: str) -> Any:
    """The field's default (a fresh one where the model declares a factory); ``PydanticUndefined`` when required."""
    return KINDS[kind].model.model_fields[name].get_default(call_default_factory=True)


class TestFixtures:
    def test_a_fixture_exists_for_every_version(self):
        """Every schema version from 1 to SCHEMA_VERSION has a frozen wire fixture and its expected decoding."""
        versions = {version_of(path) for path in WIRE_FIXTURES}
        assert versions == set(range(1, SCHEMA_VERSION + 1)), "bump SCHEMA_VERSION together with make_fixtures.py"
        for path in WIRE_FIXTURES:
            assert path.with_name(f"wire_v{version_of(path)}.expected.json").exists()

    def test_fixtures_hold_every_kind(self):
        """Every kind there is appears in the fixture of some version (a new kind comes with a fixture)."""
        kinds = {event["kind"] for path in WIRE_FIXTURES for event in load_expected(path)["events"]}
        assert kinds == set(KINDS)

    @pytest.mark.parametrize("wire", WIRE_FIXTURES, ids=lambda p: p.name)
    def test_fixture_decodes_to_its_expected_events(self, wire, same_as):
        """A frozen message decodes with today's code to its expected events; fields added since take their defaults."""
        expected = load_expected(wire)
        decoded = decode_message(wire.read_bytes())
        assert decoded.errors == []
        assert len(decoded.events) == len(expected["events"])
        for event, want in zip(decoded.events, expected["events"]):
            got = event.model_dump()
            assert event.schema_version == version_of(wire)
            assert same_as({key: got[key] for key in want}, want), event.kind
            for name in set(got) - set(want):  # appended in a later version (rule 2, rule 3)
                assert got[name] == default_of(event.kind, name), f"{event.kind}.{name}"

    @pytest.mark.parametrize("wire", WIRE_FIXTURES, ids=lambda p: p.name)
    def test_kind_codes_never_change_and_fields_only_grow_at_the_end(self, wire):
        """Each kind keeps the code it had in every frozen version, and that version's fields are a prefix of today's."""
        for kind, then in load_expected(wire)["layout"].items():
            assert KINDS[kind].code == then["code"], kind
            assert list(KINDS[kind].fields[: len(then["fields"])]) == then["fields"], kind

    def test_nan_markers_really_stand_for_nan_in_the_fixture(self):
        """The v1 fixture carries NaN and infinities as data (the markers are read back as floats)."""
        events = load_expected(FIXTURES / "wire_v1.msgpack")["events"]
        norms = next(e for e in events if e["kind"] == "head_grad_norms")["norms"]
        assert math.isnan(norms["blueprint"]) and norms["blend"] == math.inf and norms["op"] is None


class TestOlderMessages:
    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_required_fields_come_first(self, kind):
        """Fields with defaults only follow required ones: a field added later always has a default (rule 2)."""
        required = [default_of(kind, name) is PydanticUndefined for name in KINDS[kind].fields]
        assert required == sorted(required, reverse=True)

    @pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
    @pytest.mark.parametrize("kind", ALL_KINDS)
    def test_rows_lacking_trailing_fields_decode_with_defaults(self, kind, version, make, payloads, message):
        """A message of any version whose rows stop early decodes; the fields left off take their defaults (rule 3)."""
        rich = make(kind, **payloads()[kind])
        full = event_row(rich)
        fields = KINDS[kind].fields
        first_optional = sum(default_of(kind, name) is PydanticUndefined for name in fields)
        for keep in range(first_optional, len(fields) + 1):
            decoded = decode_message(message([full[: 4 + keep]], version=version))
            assert decoded.errors == [], decoded.errors
            (event,) = decoded.events
            assert event.schema_version == version
            for index, name in enumerate(fields):
                want = getattr(rich, name) if index < keep else default_of(kind, name)
                assert getattr(event, name) == want, (keep, name)

    def test_newer_version_is_refused_whole(self, events):
        """A message from a newer producer is refused as unsupported_version (upgrade consumers first)."""
        data = bytearray(encode_events(events))
        assert data[1] == SCHEMA_VERSION  # positive fixint right after the fixarray header
        data[1] = SCHEMA_VERSION + 1
        with pytest.raises(DecodeError) as caught:
            decode_message(bytes(data))
        assert caught.value.reason is RejectReason.UNSUPPORTED_VERSION
