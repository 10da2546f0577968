"""Writes ``producer/_emit_kinds.py``, the ``emit_<kind>`` methods, from the event models.

The models in ``simic.schemas.models`` are the only declaration of each kind's fields; the methods
are derived from them once, here, and checked in as ordinary code, so editors and type checkers see
them. Rerun it after adding a kind or a field (``tests/producer/test_emit_kinds.py`` fails until then)::

    make generate                                         # rewrite producer/_emit_kinds.py, that is:
    .venv/bin/python -m simic.producer._codegen           # rewrite producer/_emit_kinds.py
    .venv/bin/python -m simic.producer._codegen --check   # exit 1 if it is stale

A new kind also needs its two lines in ``Emitter`` and ``NullEmitter`` (``emit_<kind> = _emit_kinds...``);
the same test names any that is missing.

Imports: ``simic.schemas`` (the models and the codec's ``KINDS``). Nothing imports this module at run time.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from simic.schemas.codec import KINDS, KindSpec

__all__ = ["TARGET", "render", "main"]

TARGET = Path(__file__).with_name("_emit_kinds.py")
"""The generated module."""

_WIDTH = 110

_HEADER = '''\
"""One ``emit_<kind>`` method per event kind, for :class:`~simic.producer.Emitter` and ``NullEmitter``.

GENERATED from ``simic.schemas.models`` by ``python -m simic.producer._codegen``: do not edit by hand
(``tests/producer/test_emit_kinds.py`` fails when this file is stale).

``emitter.emit_ppo_update(step=s, approx_kl=kl)`` sends what ``emitter.emit("ppo_update", step=s,
approx_kl=kl)`` sends, about twice as fast: the row is built straight from named parameters in the
model's field order, with no keyword dictionary to walk. Each parameter defaults to None, "not sent"
(the field's default); the annotations are the models' field types. Anything unusual (an unknown
field, a step that is not an ``int``, a closed emitter) goes to :meth:`Emitter.emit`, which counts
and explains it without raising: ``**unknown`` is typed ``Never`` so that a type checker flags an
unknown field, while at run time it is counted, not raised.

Imports: ``time`` and, for type checkers only, the emitter module.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal, Never

if TYPE_CHECKING:
    from .emitter import Emitter, NullEmitter

__all__ = [
{names}
]

_monotonic_ns = time.monotonic_ns
'''

_EMIT = '''

def emit_{kind}(
    self: Emitter,
    *,
    step: int,
{params}
    **unknown: Never,
) -> None:
{doc}
    if unknown or type(step) is not int or self._closed:
{forward}
    now = _monotonic_ns()
{row}
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)
'''

_NULL = '''

def null_emit_{kind}(
    self: NullEmitter,
    *,
    step: int,
{params}
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_{kind}`)."""
'''


def _type(annotation: Any) -> str:
    """The annotation as source text, without pydantic's constraints (``Annotated[str, MaxLen]`` is ``str``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if annotation is type(None):
        return "None"
    if annotation in (str, int, float, bool):
        return annotation.__name__
    if origin is Literal:
        return f"Literal[{', '.join(_quoted(a) for a in args)}]"
    if origin in (Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is dict:
        return f"dict[{_type(args[0])}, {_type(args[1])}]"
    if origin is list:
        return f"list[{_type(args[0])}]"
    if getattr(annotation, "__name__", None) == "JsonValue":  # free-form JSON-like data
        return "Any"
    raise TypeError(f"no source text for the annotation {annotation!r}: extend simic.producer._codegen._type")


def _quoted(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _optional(annotation: Any) -> str:
    text = _type(annotation)
    return text if text == "Any" or text.endswith("| None") or text == "None" else f"{text} | None"


def _doc(spec: KindSpec) -> str:
    lines = [f"Emit a ``{spec.kind}`` event (see :class:`simic.schemas.{spec.model.__name__}`). Fields:", ""]
    for name in spec.fields:
        description = " ".join((spec.model.model_fields[name].description or "").split())
        item = f"- ``{name}``: {description}".rstrip(": ")
        lines.extend(textwrap.wrap(item, _WIDTH - 4, subsequent_indent="  ", break_on_hyphens=False))
    body = "\n".join(f"    {line}" if line else "" for line in lines)
    return f'    """{body[4:]}\n    """'


def _bracketed(opening: str, items: list[str], closing: str, indent: str) -> str:
    """``opening`` + the items + ``closing`` on one line when it fits, else the items on lines of their own
    (as few as fit), one level deeper."""
    line = f"{indent}{opening}{', '.join(items)}{closing}"
    if len(line) <= _WIDTH:
        return line
    inner = indent + "    "
    body = textwrap.wrap(", ".join(items) + ",", _WIDTH, initial_indent=inner, subsequent_indent=inner,
                         break_long_words=False, break_on_hyphens=False)
    return "\n".join([f"{indent}{opening}", *body, f"{indent}{closing}"])


def _params(spec: KindSpec) -> str:
    return "\n".join(f"    {name}: {_optional(spec.model.model_fields[name].annotation)} = None," for name in spec.fields)


def render() -> str:
    """The source of ``_emit_kinds.py`` for today's models."""
    names = [f"emit_{kind}" for kind in KINDS] + [f"null_emit_{kind}" for kind in KINDS]
    parts = [_HEADER.format(names="\n".join(f'    "{name}",' for name in names))]
    for spec in KINDS.values():
        parts.append(_EMIT.format(
            kind=spec.kind,
            params=_params(spec),
            doc=_doc(spec),
            forward=_bracketed("return self.emit(", [_quoted(spec.kind), "step=step", *(f"{n}={n}" for n in spec.fields),
                                                      "**unknown"], ")", " " * 8),
            row=_bracketed("row = [", [str(spec.code), "self._seq", "now", "step", *spec.fields], "]", " " * 4),
        ))
    for spec in KINDS.values():
        parts.append(_NULL.format(kind=spec.kind, params=_params(spec)))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simic.producer._codegen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {TARGET.name} differs from what the models give")
    args = parser.parse_args(argv)
    source = render()
    current = TARGET.read_text() if TARGET.exists() else ""
    if args.check:
        if current != source:
            print(f"{TARGET} is stale: run python -m simic.producer._codegen", file=sys.stderr)
            return 1
        return 0
    if current != source:
        TARGET.write_text(source)
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
