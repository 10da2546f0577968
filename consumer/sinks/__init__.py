"""Where the pipeline's results go: each module a stage that records, sends or shows what passes, except ``retention``.

- ``event_log``: every received message, byte for byte, into rotating segments (what replay reads);
  ``retention``, not a stage, compresses closed segments and removes the oldest (a thread the event
  log sink wakes; replay and the daemon read its record of what was removed).
- ``alert_console``, ``alert_jsonl``, ``alert_pub``: alerts on the console, in ``alerts.jsonl``, on a PUB socket.
- ``dead_letter``: refused messages kept aside.
- ``metrics``: Prometheus; ``dashboard``: the live terminal view; ``export/``: TensorBoard and wandb.

Sinks import the pipeline (its contract, the JSON form of alerts, and what they show: ``accounting``,
``ranks``, the kinds ``updates`` combines), never the rules; ``alert_pub``, a socket like the live
source, uses the daemon's endpoint claim and CURVE server.
"""
