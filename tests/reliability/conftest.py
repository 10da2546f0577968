"""Reliability tests reuse the consumer tests' real-daemon fixtures (a `simic-consumer run` subprocess)."""

from tests.consumer.conftest import Cli, Daemon, WAIT_S, cli, consumer_command, daemons, ipc_endpoint  # noqa: F401
