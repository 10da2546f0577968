"""The pipeline: the stage contract, its assembly, and the stages every batch passes before the rules.

::

    Batch(raw bytes) -> decode -> [event log] -> accounting -> alert clock -> updates -> rules -> alert sinks

- ``contract``: :class:`Batch`, :class:`Stage`, :class:`SyncStage`, :class:`Stateful`, :class:`Pipeline`
  (what every stage honours; read it first).
- ``build``: the stages from a configuration, in order; the daemon and replay both call it.
- ``accounting``: who is sending, what arrived, what was lost or refused.
- ``alerts``: how rules make alerts (:class:`AlertMaker`), the stage that stamps them with the
  batch's arrival time, and the JSON form of an alert (``alerts.jsonl``, ``replay --json``).
- ``updates``: the stage that combines the events of one update into one, for the rules that count updates.
- ``ranks``: the newest of every measurement per run and rank, read one way by the metrics sink,
  the dashboard and the report.

May import ``simic.schemas``, ``simic.consumer.config`` and, for ``build`` only, the rules and the
sinks it assembles; nothing here imports the daemon's sockets or threads.
"""
