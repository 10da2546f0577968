"""simic.schemas: the wire contract between trainer and consumer.

``models`` declares every event kind, ``codec`` turns them into compact msgpack and back (refusing
bad bytes with a counted reason), ``eventlog`` stores received messages in checksummed frames.
"""

from .codec import (
    KINDS,
    MAX_MESSAGE_BYTES,
    BadEnvelope,
    DecodeError,
    Decoded,
    InvalidEvent,
    MalformedMessage,
    OversizedMessage,
    RejectReason,
    UnknownKind,
    UnsupportedVersion,
    decode_message,
    encode_events,
    encode_message,
)
from .eventlog import Frame, LogFormatError, LogProblem, LogReader, LogWriteError, LogWriter
from .models import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    Alert,
    AnyEvent,
    Event,
    HeadGradNorms,
    Heartbeat,
    LstmHealth,
    PpoUpdate,
    ProfilerTrace,
    RunEnd,
    RunStart,
    StepTiming,
)

__all__ = [
    "SCHEMA_VERSION",
    "EVENT_TYPES",
    "KINDS",
    "MAX_MESSAGE_BYTES",
    "Event",
    "AnyEvent",
    "RunStart",
    "StepTiming",
    "HeadGradNorms",
    "LstmHealth",
    "PpoUpdate",
    "ProfilerTrace",
    "Heartbeat",
    "RunEnd",
    "Alert",
    "encode_message",
    "encode_events",
    "decode_message",
    "Decoded",
    "RejectReason",
    "DecodeError",
    "OversizedMessage",
    "MalformedMessage",
    "BadEnvelope",
    "UnsupportedVersion",
    "UnknownKind",
    "InvalidEvent",
    "LogWriter",
    "LogReader",
    "Frame",
    "LogProblem",
    "LogFormatError",
    "LogWriteError",
]
