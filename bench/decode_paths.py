"""Ways to turn a message's msgpack rows into validated events, timed side by side.

Every candidate builds the events ``decode_message`` returns (instances of the models in
``simic.schemas.models``) from the same messages, through public APIs only:

- ``decode_message``: the codec as it is in this tree;
- ``model_validate``: ``Model.model_validate(fields)`` per row, fields being the envelope and the
  payload values sent (what the codec did before it had a faster path);
- ``validator``: ``TypeAdapter(Model).validator.validate_python(fields)`` per row, the same
  validation without the method's Python wrapper; ``validator, extra="ignore"``: the same call told
  not to look for extra keys (the rows' fields are only declared names, so there are none to find);
- ``union adapter``: one ``TypeAdapter(list[AnyEvent])`` call per message, ``kind`` sent in every
  row for the discriminator (so ``kind`` joins each event's ``model_fields_set``: not the same events);
- ``msgspec + model_construct``: msgspec decodes the whole message into array-like structs tagged by
  kind code (derived here from the models' annotations), then ``Model.model_construct`` builds each
  event without validation; ``msgspec alone``: the decode without building the events (a floor).
  The msgspec rows need ``pip install msgspec`` (not a dependency of this project); the derived
  structs are only as faithful as a benchmark needs, not checked to refuse what the models refuse
  (msgspec takes no integer bound beyond int64: ``lt=2**63`` becomes ``le=2**63 - 1``).

Two workloads, as in ``consumer_throughput.py``: 8 ``head_grad_norms`` per message, and the 8 events
of a PPO step. Candidates run interleaved, ``--rounds`` times; CPU time of this process
(``time.process_time``, so time the machine gives to other work is not counted), median and best
per event.

    .venv/bin/python bench/decode_paths.py [--messages 3000] [--rounds 9] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import time
import types
from typing import Annotated, Any, Callable, Literal, Union, get_args, get_origin

if not __package__:  # run as a script (python bench/decode_paths.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.consumer_throughput import messages, mixed_messages  # noqa: E402
from bench.emit_cost import machine  # noqa: E402

import annotated_types  # noqa: E402
from pydantic import JsonValue, TypeAdapter  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

from simic.schemas import decode_message  # noqa: E402
from simic.schemas.codec import KINDS_BY_CODE, _unpack  # noqa: E402
from simic.schemas.models import ENVELOPE_FIELDS, AnyEvent  # noqa: E402

try:
    import msgspec
except ImportError:  # the msgspec rows are left out
    msgspec = None


def row_fields(version: int, run_id: str, rank: int, session: int, row: list[Any]) -> dict[str, Any]:
    """The fields a row sends: the envelope, then the payload values that are not nil."""
    fields = {"schema_version": version, "run_id": run_id, "rank": rank, "session": session,
              "seq": row[1], "clock_ns": row[2], "step": row[3]}
    for name, value in zip(KINDS_BY_CODE[row[0]].fields, row[4:]):
        if value is not None:
            fields[name] = value
    return fields


def per_row(validate: dict[int, Callable[..., Any]], **options: Any) -> Callable[[list[bytes]], None]:
    def run(raws: list[bytes]) -> None:
        for raw in raws:
            version, run_id, rank, session, rows = _unpack(raw)
            for row in rows:
                validate[row[0]](row_fields(version, run_id, rank, session, row), **options)
    return run


def union_adapter() -> Callable[[list[bytes]], None]:
    validate = TypeAdapter(list[AnyEvent]).validator.validate_python

    def run(raws: list[bytes]) -> None:
        for raw in raws:
            version, run_id, rank, session, rows = _unpack(raw)
            validate([{"kind": KINDS_BY_CODE[row[0]].kind, **row_fields(version, run_id, rank, session, row)} for row in rows])
    return run


# -- msgspec: structs derived from the models -------------------------------------------------------


def _meta(metadata: list[Any]) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            bounds.update(_meta(item.metadata))
        elif isinstance(item, annotated_types.MinLen):
            bounds["min_length"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            bounds["max_length"] = item.max_length
        else:
            for name in ("ge", "gt", "le", "lt"):
                if isinstance(item, getattr(annotated_types, name.capitalize())):
                    bounds[name] = getattr(item, name)
    if bounds.get("lt") == 2**63:  # msgspec takes int64 bounds only: the same integers
        bounds["le"] = 2**63 - 1
        del bounds["lt"]
    return bounds


def _msgspec_type(annotation: Any, metadata: list[Any] = ()) -> Any:
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _msgspec_type(inner, [*metadata, *extra])
    if annotation is JsonValue:
        base = Any
    elif origin in (Union, types.UnionType):
        base = Union[tuple(_msgspec_type(arg) for arg in get_args(annotation))]
    elif origin is Literal:
        base = annotation
    elif origin is list:
        base = list[_msgspec_type(get_args(annotation)[0])]
    elif origin is dict:
        key, value = get_args(annotation)
        base = dict[_msgspec_type(key), _msgspec_type(value)]
    else:
        base = annotation
    bounds = _meta(list(metadata))
    return Annotated[base, msgspec.Meta(**bounds)] if bounds else base


def msgspec_decoder() -> tuple[Any, dict[type, Any]]:
    """A decoder of whole messages into structs, and each struct type's spec."""
    structs = {}
    for code, spec in KINDS_BY_CODE.items():
        fields = [(name, _msgspec_type(spec.model.model_fields[name].annotation, spec.model.model_fields[name].metadata))
                  for name in ("seq", "clock_ns", "step")]
        fields += [(name, _msgspec_type(spec.model.model_fields[name].annotation, spec.model.model_fields[name].metadata) | None, None)
                   for name in spec.fields]
        struct = msgspec.defstruct(f"Row{code}", fields, array_like=True, tag=code)
        structs[struct] = spec
    message = tuple[int, str, int, int, list[Union[tuple(structs)]]]
    return msgspec.msgpack.Decoder(message), structs


def msgspec_construct(build: bool) -> Callable[[list[bytes]], None]:
    decoder, structs = msgspec_decoder()
    plan = {struct: (spec.model.model_construct, struct.__struct_fields__) for struct, spec in structs.items()}

    def run(raws: list[bytes]) -> None:
        for raw in raws:
            version, run_id, rank, session, rows = decoder.decode(raw)
            if not build:
                continue
            for row in rows:
                construct, names = plan[type(row)]
                fields = {"schema_version": version, "run_id": run_id, "rank": rank, "session": session}
                for name in names:
                    value = getattr(row, name)
                    if value is not None:
                        fields[name] = value
                construct(**fields)
    return run


def candidates() -> dict[str, Callable[[list[bytes]], None]]:
    adapters = {code: TypeAdapter(spec.model).validator.validate_python for code, spec in KINDS_BY_CODE.items()}
    def codec(raws: list[bytes]) -> None:
        for raw in raws:
            decode_message(raw)

    found = {
        "decode_message (this tree)": codec,
        "model_validate per row": per_row({code: spec.model.model_validate for code, spec in KINDS_BY_CODE.items()}),
        "validator per row": per_row(adapters),
        'validator per row, extra="ignore"': per_row(adapters, extra="ignore"),
        "union adapter per message (kind sent)": union_adapter(),
    }
    if msgspec is not None:
        found["msgspec + model_construct"] = msgspec_construct(build=True)
        found["msgspec alone (no events built)"] = msgspec_construct(build=False)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages of 8 events per workload (default 3000)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved runs of every candidate (default 9)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 messages, one round")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = 200, 1
    info = machine()
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("pydantic", "pydantic-core", "msgpack")
                         ) + (f", msgspec {msgspec.__version__}" if msgspec is not None else ", msgspec not installed")
    print(f"Machine: nproc {info['nproc']}, {info['cpu']}, Python {info['python']}, {versions}; "
          f"1-min load average {os.getloadavg()[0]:.2f}")
    assert set(ENVELOPE_FIELDS) == {"schema_version", "kind", "run_id", "rank", "session", "seq", "clock_ns", "step"}
    runs = candidates()
    for name, raws in (("head_grad_norms", messages(args.messages)), ("mixed step", mixed_messages(args.messages))):
        events = sum(len(decode_message(raw).events) for raw in raws)
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, run in runs.items():
                start = time.process_time()
                run(raws)
                times[label].append(time.process_time() - start)
        print(f"\n### {name}: {events} events in {len(raws)} messages, {args.rounds} interleaved rounds, CPU time\n")
        print("| candidate | µs/event (median) | best | events/s (median) |\n|---|---:|---:|---:|")
        for label, spent in times.items():
            median = statistics.median(spent)
            print(f"| {label} | {median / events * 1e6:.2f} | {min(spent) / events * 1e6:.2f} | {events / median:,.0f} |")


if __name__ == "__main__":
    main()
