"""simic.producer.integrations: one module per training library, each an optional extra.

- ``simic.producer.integrations.sb3``: ``SimicCallback`` for Stable-Baselines3 and sb3-contrib
  (``pip install 'simic-telemetry[sb3]'``).
- ``simic.producer.integrations.lightning``: ``SimicCallback`` for PyTorch Lightning
  (``pip install 'simic-telemetry[lightning]'``).

Importing this package imports neither library; each module imports its own.
"""
