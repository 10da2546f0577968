"""A real ZeroMQ PULL socket standing in for the consumer, bound over ipc (in tmp_path) or tcp loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from simic.producer import Emitter, EmitterSettings
from tests import receiver as receivers
from tests.receiver import Receiver

@pytest.fixture
def zmq_context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def ipc_endpoint(tmp_path: Path) -> str:
    """An ipc endpoint in this test's private directory (nobody bound yet)."""
    return f"ipc://{tmp_path}/consumer.ipc"


@pytest.fixture(params=["ipc", "tcp"])
def receiver(request, zmq_context, ipc_endpoint) -> Receiver:
    """A bound PULL socket, over ipc in tmp_path and over tcp loopback."""
    receiver = Receiver(zmq_context)
    receiver.bind(ipc_endpoint if request.param == "ipc" else "tcp://127.0.0.1:*")
    return receiver


@pytest.fixture
def ipc_receiver(zmq_context, ipc_endpoint) -> Receiver:
    """A bound PULL socket over ipc only."""
    receiver = Receiver(zmq_context)
    receiver.bind(ipc_endpoint)
    return receiver


@pytest.fixture
def unbound_receiver(zmq_context, ipc_endpoint) -> Receiver:
    """A consumer that has not bound yet: ``bind()`` it when the test wants it to appear."""
    return Receiver(zmq_context, ipc_endpoint)


@pytest.fixture
def consumer(tmp_path: Path):
    """A real PULL socket bound on ipc in the test's directory, decoding what arrives (the collector tests' consumer)."""
    receiver = receivers.ipc_receiver(tmp_path)
    yield receiver
    receivers.close_all(receiver)


@pytest.fixture
def emitter(request, consumer: Receiver):
    """An emitter sending to ``consumer``, its run named after the test module (no exit hooks)."""
    run_id = request.module.__name__.rpartition(".")[2].removeprefix("test_").replace("_", "-")
    emitter = Emitter(consumer.endpoint, run_id=run_id, settings=EmitterSettings(exit_hooks=False))
    yield emitter
    emitter.close()
