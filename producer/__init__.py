"""simic.producer: what a trainer imports.

``Emitter`` batches events and hands them to ZeroMQ without ever waiting; ``NullEmitter`` is the
same interface doing nothing (telemetry off). ``Emitter.from_env()`` picks between them.
"""

from .emitter import Emitter, EmitterSettings, EmitterStats, NullEmitter

__all__ = ["Emitter", "NullEmitter", "EmitterSettings", "EmitterStats"]
