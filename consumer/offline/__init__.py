"""Recorded logs, after the fact: ``simic-consumer replay`` and ``simic-consumer inspect``.

::

    event log(s) -> LogFilesSource -> the daemon's pipeline (pipeline.build) -> RecordingSink -> ReplayResult

- ``replay``: :func:`replay` runs recorded logs through the analysis the live daemon builds
  (``pipeline.build``) and returns the alerts and a summary; the report and ``simic-consumer export``
  build on it.
- ``inspect_log``: the summary of a log as text (what it holds, what was lost or removed).

May import the pipeline, the sources, the configuration and ``simic.consumer.sinks.retention`` (what
the log no longer holds); never the daemon's sockets.
"""
