"""The emit_<kind> methods: generated from the models into checked-in code, sending exactly what emit() sends."""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgpack
import numpy as np
import pytest

from simic.producer import Emitter, EmitterSettings, NullEmitter, _codegen, _emit_kinds
from simic.schemas.codec import KINDS
from simic.schemas.models import Heartbeat

QUIET = EmitterSettings(exit_hooks=False, heartbeat_interval_s=0, max_batch_delay_ms=1e9, background_delivery=False)


def value_of(annotation: Any, n: int) -> Any:
    """A value of the field's type that differs from field to field (``n``: the field's position); the
    second and third fields are NaN and -Inf where they are floats."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return value_of(args[0], n)
    if origin in (Union, types.UnionType):
        return value_of(next(a for a in args if a is not type(None)), n)
    if origin is Literal:
        return args[n % len(args)]
    if origin is dict:
        return {f"key{n}": value_of(args[1], n + 1)}
    if origin is list:
        return [value_of(args[0], n + 1), value_of(args[0], n + 2)]
    if annotation is float:
        return {1: math.nan, 2: -math.inf}.get(n, n + 0.25)
    if annotation is bool:
        return n % 2 == 0
    if annotation is int:
        return 1000 + n
    if annotation is str:
        return f"text{n}"
    return {"free": [n, "form"]}  # JsonValue


def sample_payloads() -> dict[str, dict]:
    """Every field of every kind set, each to a value of its type that no other field of the kind has."""
    return {kind: {name: value_of(spec.model.model_fields[name].annotation, n) for n, name in enumerate(spec.fields)}
            for kind, spec in KINDS.items()}


class HeartbeatWithMore(Heartbeat):
    """A heartbeat as a later schema might declare it: one field appended."""

    queue_depth: int | None = None
    """Messages waiting in the producer's queue."""


class TestGeneratedModule:
    def test_the_checked_in_module_is_what_the_models_give(self):
        """producer/_emit_kinds.py is the generator's output for today's models (a model changed without regenerating fails here)."""
        assert _codegen.TARGET.read_text() == _codegen.render(), "stale: run .venv/bin/python -m simic.producer._codegen"

    def test_check_fails_on_a_stale_module_until_it_is_regenerated(self, tmp_path, monkeypatch):
        """A field added to a model makes --check exit 1; the generator then writes the new parameter and --check passes."""
        target = tmp_path / "_emit_kinds.py"
        target.write_text(_codegen.TARGET.read_text())
        monkeypatch.setattr(_codegen, "TARGET", target)
        assert _codegen.main(["--check"]) == 0
        spec = KINDS["heartbeat"]
        monkeypatch.setitem(_codegen.KINDS, "heartbeat", dataclasses.replace(
            spec, model=HeartbeatWithMore, fields=(*spec.fields, "queue_depth"),
            field_set=spec.field_set | {"queue_depth"}, defaults=(*spec.defaults, None)))
        assert _codegen.main(["--check"]) == 1
        assert _codegen.main([]) == 0
        source = target.read_text()
        assert "    queue_depth: int | None = None,\n" in source
        assert "- ``queue_depth``: Messages waiting in the producer's queue." in source
        assert _codegen.main(["--check"]) == 0

    def test_no_exec_and_no_setattr(self):
        """The methods are plain source: the generated module and the emitter neither exec nor setattr."""
        for module in (_emit_kinds, inspect.getmodule(Emitter)):
            source = Path(module.__file__).read_text()
            assert "exec(" not in source and "setattr(" not in source, module.__name__


class TestMethods:
    @pytest.mark.parametrize("kind", list(KINDS))
    def test_every_kind_has_its_method_with_the_fields_as_parameters(self, kind):
        """Emitter.emit_<kind> is the generated method, NullEmitter's the generated no-op; the keyword
        parameters are step and the model's fields in wire order, each defaulting to None (not sent)."""
        assert getattr(Emitter, f"emit_{kind}") is getattr(_emit_kinds, f"emit_{kind}")
        assert getattr(NullEmitter, f"emit_{kind}") is getattr(_emit_kinds, f"null_emit_{kind}")
        params = list(inspect.signature(getattr(Emitter, f"emit_{kind}")).parameters.values())
        assert [p.name for p in params] == ["self", "step", *KINDS[kind].fields, "unknown"]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None for p in params[2:-1])
        assert params[-1].kind is inspect.Parameter.VAR_KEYWORD

    def test_no_method_for_a_kind_that_does_not_exist(self):
        """The emit_ methods are exactly one per kind."""
        assert {name for name in dir(Emitter) if name.startswith("emit_")} == {f"emit_{kind}" for kind in KINDS}

    def test_each_method_puts_the_row_emit_puts_on_the_wire(self, ipc_receiver):
        """For every kind, with every field set (to values that tell fields apart, NaN and Inf included) and with only the step,
        emit_<kind> sends the bytes emit(kind, ...) sends, sequence number and clock aside."""
        payloads = sample_payloads()
        assert set(payloads) == set(KINDS)
        emitter = Emitter(ipc_receiver.endpoint, run_id="kinds", settings=QUIET)
        assert [e.kind for e in ipc_receiver.next_events()] == ["run_start"]  # sent at construction
        try:
            for kind, fields in payloads.items():
                for given in (fields, {}):
                    emitter.emit(kind, step=7, **given)
                    getattr(emitter, f"emit_{kind}")(step=7, **given)
            emitter.flush()
            rows = msgpack.unpackb(ipc_receiver.recv(), raw=True)[4]
        finally:
            emitter.close()
        assert len(rows) == 4 * len(KINDS) and emitter.stats.invalid == 0
        pairs = list(zip(rows[0::2], rows[1::2]))
        for generic, generated in pairs:
            assert generic[1] + 1 == generated[1]  # consecutive sequence numbers
            assert msgpack.packb([generic[0], *generic[3:]]) == msgpack.packb([generated[0], *generated[3:]])

    def test_unusual_calls_go_to_emit_which_counts_them(self, ipc_receiver, caplog):
        """An unknown field is refused and counted as emit refuses it, never raised; a numpy step is taken as emit
        takes it; after close the event is counted as dropped."""
        emitter = Emitter(ipc_receiver.endpoint, run_id="kinds", settings=QUIET)
        assert [e.kind for e in ipc_receiver.next_events()] == ["run_start"]  # sent at construction
        emitter.emit_heartbeat(step=1, no_such_field=3)  # type: ignore[call-arg]
        assert emitter.stats.invalid == 1 and emitter.stats.produced == 1  # run_start only
        assert "heartbeat has no field(s) ['no_such_field']" in caplog.text
        emitter.emit_heartbeat(step=np.int64(2), sent=1)
        emitter.flush()
        assert [(e.kind, e.step, e.sent) for e in ipc_receiver.next_events()] == [("heartbeat", 2, 1)]
        emitter.close()
        emitter.emit_heartbeat(step=3)
        assert emitter.stats.dropped == 1

    def test_null_methods_accept_the_same_calls_and_do_nothing(self):
        """NullEmitter.emit_<kind> takes every field, an unknown one too, and counts nothing."""
        null = NullEmitter()
        for kind, fields in sample_payloads().items():
            getattr(null, f"emit_{kind}")(step=1, **fields)
        null.emit_heartbeat(step=1, no_such_field=3)  # type: ignore[call-arg]
        assert null.stats.produced == null.stats.invalid == 0
