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

The modules here import ``simic.schemas`` and each other, little else: ``contract`` reads the
clock-tick note of ``simic.consumer.daemon.lifecycle`` (a trainer's exit, live and in replay), ``updates``
bounds its keys with the rules' ``Capped``, and ``build``, the one assembler, imports the configuration,
the rules and the sinks.
"""
