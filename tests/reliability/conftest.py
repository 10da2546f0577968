"""Reliability tests reuse the consumer tests' real-daemon fixtures (a `simic-consumer run` subprocess)."""

import time

from tests.consumer.conftest import Cli, Daemon, WAIT_S, cli, consumer_command, daemons, ipc_endpoint  # noqa: F401


def wait_until(predicate, what: str, timeout_s: float = WAIT_S) -> None:
    """Poll a condition on files or counters (the standard library has no notification for them);
    fails after ``timeout_s``, a hang guard."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
