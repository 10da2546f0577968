"""What an emitter says at close about its events is true: delivered, undelivered or unknown.

Real sockets and processes: a real ``simic-consumer run`` daemon (its delivery receipt answers each
``run_end``), a daemon stopped with SIGSTOP, no consumer at all, and a consumer of real ZeroMQ
sockets that answers with a receipt of its own. After ``close()``: ``sent == delivered + undelivered
+ unknown``, and each number is only claimed when it is known.
"""

from __future__ import annotations

import logging
import signal
import threading

import zmq

from simic.producer import Emitter, EmitterSettings
from simic.schemas import DeliveryReceipt, decode_message, encode_events
from simic.schemas.transport import alerts_endpoint_for

from .conftest import WAIT_S

NO_HOOKS = EmitterSettings(exit_hooks=False)


def emit_metrics(emitter: Emitter, count: int) -> None:
    for step in range(count):
        emitter.emit_metrics(step=step, values={"loss": 0.5})


def totals(emitter: Emitter) -> tuple[int, int, int]:
    stats = emitter.stats
    assert stats.sent == stats.delivered + stats.undelivered + stats.unknown
    return stats.delivered, stats.undelivered, stats.unknown


class TestDeliveryAtClose:
    def test_events_nobody_ever_received_are_called_undelivered_once_naming_the_endpoint(self, tmp_path, caplog):
        """200k events to an endpoint no consumer ever bound: ZeroMQ took them all (sent, none dropped)
        and discards them at close; the emitter says so, once, with the count and the endpoint."""
        endpoint = f"ipc://{tmp_path}/nobody.ipc"
        emitter = Emitter(endpoint, run_id="alone", settings=EmitterSettings(exit_hooks=False, linger_ms=200))
        emit_metrics(emitter, 200_000)
        with caplog.at_level(logging.INFO, logger="simic.producer"):
            emitter.close()
        assert (emitter.stats.sent, emitter.stats.dropped) == (200_002, 0)
        assert totals(emitter) == (0, 200_002, 0)
        said = [record.getMessage() for record in caplog.records if "never delivered" in record.getMessage()]
        assert said == [f"simic emitter: 200002 of 200002 events of run 'alone' rank 0 session {emitter.session} were never "
                        f"delivered: no consumer ever connected to {endpoint}"]

    def test_a_running_daemon_confirms_every_event(self, tmp_path, ipc_endpoint, daemons):
        """The daemon's receipt of run_end confirms every event sent, run_start and run_end included."""
        daemon = daemons(ipc_endpoint, tmp_path / "logs")
        emitter = Emitter(daemon.endpoint, run_id="confirmed", settings=NO_HOOKS)
        emit_metrics(emitter, 5_000)
        emitter.close()
        assert emitter.stats.sent == 5_002 and emitter.stats.dropped == 0
        assert totals(emitter) == (5_002, 0, 0)
        line = daemon.wait_for("run confirmed rank 0 session")
        assert "received 5002, lost 0" in line
        assert daemon.stop() == 0

    def test_a_daemon_far_behind_at_close_still_receives_the_tail(self, tmp_path, ipc_endpoint, daemons):
        """A producer emitting back to back into a daemon with small queues closes while the daemon is
        still many messages behind: close keeps the connection open while it waits for the receipt, so
        the tail arrives (run_end included) and is confirmed. Without the wait, libzmq discarded what
        was still in flight when the connection went, run_end with it, uncounted."""
        config = tmp_path / "small.toml"
        config.write_text("[daemon]\nqueue_messages = 10\nreceive_hwm = 100\n")
        daemon = daemons(ipc_endpoint, tmp_path / "logs", "--config", str(config))
        settings = EmitterSettings(exit_hooks=False, max_batch_events=16, linger_ms=int(WAIT_S * 1000))
        emitter = Emitter(daemon.endpoint, run_id="behind", settings=settings)
        emit_metrics(emitter, 40_000)
        emitter.close()
        stats = emitter.stats
        assert stats.sent > 0
        assert totals(emitter) == (stats.sent, 0, 0)
        line = daemon.wait_for("run behind rank 0 session")
        assert f"received {stats.sent}, lost {stats.dropped}" in line  # the daemon's gaps are the producer's own drops
        assert daemon.stop() == 0

    def test_a_stopped_daemon_leaves_the_fate_unknown(self, tmp_path, ipc_endpoint, daemons):
        """A daemon that was connected but does not answer before linger_ms runs out: the events may
        still arrive, so they are neither confirmed nor called lost."""
        daemon = daemons(ipc_endpoint, tmp_path / "logs")
        emitter = Emitter(daemon.endpoint, run_id="frozen", settings=EmitterSettings(exit_hooks=False, linger_ms=300))
        emit_metrics(emitter, 1_000)
        emitter.emit_head_grad_norms(step=1_000, norms={"policy": 1.0}, total=float("nan"))
        emitter.flush()
        daemon.wait_for("non_finite")  # the daemon's alert about it: it is connected and received the events
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            emitter.close()
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        assert totals(emitter) == (0, 0, emitter.stats.sent)
        assert daemon.stop() == 0

    def test_a_receipt_that_counts_fewer_than_were_sent_is_believed(self, tmp_path):
        """A consumer whose receipt says it received fewer events than were sent: the difference is
        undelivered (lost on the way), the rest delivered."""
        context = zmq.Context()
        try:
            pull, pub = context.socket(zmq.PULL), context.socket(zmq.XPUB)
            pull.bind(f"ipc://{tmp_path}/c.ipc")
            pub.bind(alerts_endpoint_for(f"ipc://{tmp_path}/c.ipc"))
            emitter = Emitter(f"ipc://{tmp_path}/c.ipc", run_id="short", settings=EmitterSettings(exit_hooks=False, linger_ms=int(WAIT_S * 1000)))
            # The emitter's subscription has reached the publisher (an XPUB says so): the receipt cannot be
            # published to nobody, and the emitter's alerts socket has its handshake, however slow the machine.
            assert pub.poll(int(WAIT_S * 1000)) and pub.recv() == b"\x01short"
            emit_metrics(emitter, 100)
            # The stand-in consumer answers run_end, as simic-consumer does, but says 3 events never came.
            def answer() -> None:
                received = 0
                while pull.poll(int(WAIT_S * 1000)):
                    events = decode_message(pull.recv()).events
                    received += len(events)
                    end = next((e for e in events if e.kind == "run_end"), None)
                    if end is not None:
                        receipt = DeliveryReceipt(run_id=end.run_id, rank=end.rank, session=end.session, seq=end.seq,
                                                  clock_ns=end.clock_ns, step=end.step, received=received - 3, lost=3)
                        pub.send_multipart([end.run_id.encode(), encode_events([receipt])])
                        return

            responder = threading.Thread(target=answer)
            responder.start()
            emitter.close()
            responder.join(WAIT_S)
            assert emitter.stats.sent == 102
            assert totals(emitter) == (99, 3, 0)
        finally:
            context.destroy(linger=0)

    def test_a_plain_socket_standing_in_for_a_consumer_sends_no_receipt(self, tmp_path):
        """A PULL socket and no alerts publisher: the events were taken by a peer, nothing confirms
        them, and close does not wait for a receipt that cannot come."""
        context = zmq.Context()
        try:
            pull = context.socket(zmq.PULL)
            pull.bind(f"ipc://{tmp_path}/c.ipc")
            emitter = Emitter(f"ipc://{tmp_path}/c.ipc", run_id="plain", settings=EmitterSettings(exit_hooks=False, linger_ms=int(WAIT_S * 1000)))
            emit_metrics(emitter, 10)
            emitter.close()  # the hang guard: a wait for a receipt would last WAIT_S
            assert totals(emitter) == (0, 0, 12)
            received = []
            while pull.poll(int(WAIT_S * 1000)):
                received += decode_message(pull.recv()).events
                if received[-1].kind == "run_end":
                    break
            assert len(received) == 12
        finally:
            context.destroy(linger=0)
