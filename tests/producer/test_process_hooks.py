"""Process hooks, with real trainer processes: crashes, exits without close(), and fork."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

TRAINER = Path(__file__).with_name("fake_trainer.py")
PROCESS_TIMEOUT_S = 60
"""Hang guard for a trainer process (it normally ends in about a second)."""


def run_trainer(mode: str, receiver, sessions: int = 1) -> tuple[list, subprocess.CompletedProcess]:
    """Run the fake trainer against ``receiver``: the events up to ``sessions`` run_ends, and how it ended
    (``CompletedProcess`` with ``pid`` added)."""
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER), mode, receiver.endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        events = receiver.until_run_end(sessions)
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid
    return events, done


def by_session(events: list) -> dict[int, list]:
    sessions: dict[int, list] = {}
    for event in events:
        sessions.setdefault(event.session, []).append(event)
    return sessions


class TestUncaughtException:
    def test_crash_delivers_the_last_events_and_run_end_error(self, ipc_receiver):
        """An uncaught exception still sends the pending events (the one showing the fault included) and run_end status error naming it."""
        events, done = run_trainer("crash", ipc_receiver)
        assert done.returncode == 1 and "FloatingPointError" in done.stderr  # the usual traceback still prints
        assert [e.kind for e in events] == ["run_start"] + ["lstm_health"] * 4 + ["run_end"]
        assert [e.seq for e in events] == list(range(6))
        fault = events[-2]
        assert fault.step == 3 and fault.has_nan is True and math.isnan(fault.h_norm)
        run_end = events[-1]
        assert (run_end.status, run_end.error) == ("error", "FloatingPointError: NaN in LSTM state at step 3")
        assert (run_end.sent, run_end.dropped) == (5, 0)

    def test_uncaught_keyboard_interrupt_is_reported_as_interrupted(self, ipc_receiver):
        """Ctrl-C ending the program sends run_end status interrupted."""
        events, done = run_trainer("interrupt", ipc_receiver)
        assert done.returncode != 0
        assert [e.step for e in events if e.kind == "lstm_health"] == [0, 1, 2]
        assert events[-1].status == "interrupted"


class TestExitWithoutClose:
    @pytest.mark.parametrize(("mode", "code"), [("exit", 0), ("sys_exit", 3)])
    def test_exit_without_close_sends_pending_events_and_run_end_exit(self, ipc_receiver, mode, code):
        """A script that ends (or calls sys.exit) without close() still sends its pending events and run_end status exit."""
        events, done = run_trainer(mode, ipc_receiver)
        assert done.returncode == code
        assert [e.kind for e in events] == ["run_start", "lstm_health", "lstm_health", "lstm_health", "run_end"]
        assert [e.seq for e in events] == list(range(5))
        assert (events[-1].status, events[-1].error, events[-1].sent) == ("exit", None, 4)


class TestFork:
    def test_forked_child_emits_on_its_own_session_and_the_parent_is_untouched(self, ipc_receiver):
        """After fork the child sends its own run_start (its pid), seq from 0, without the parent's pending events; the parent's session goes on contiguous."""
        events, done = run_trainer("fork", ipc_receiver, sessions=2)
        assert done.returncode == 0, done.stderr
        child_pid = int(done.stdout.split()[1])
        sessions = by_session(events)
        assert sorted(s[0].pid for s in sessions.values()) == sorted([done.pid, child_pid])
        child = next(s for s in sessions.values() if s[0].pid == child_pid)
        parent = next(s for s in sessions.values() if s[0].pid == done.pid)

        assert [e.kind for e in child] == ["run_start", "heartbeat", "heartbeat", "heartbeat", "run_end"]
        assert [e.seq for e in child] == list(range(5))
        assert [e.step for e in child if e.kind == "heartbeat"] == [100, 101, 102]
        assert (child[-1].status, child[-1].sent, child[-1].dropped) == ("ok", 4, 0)

        assert [e.seq for e in parent] == list(range(8))
        assert [e.step for e in parent if e.kind == "lstm_health"] == [0, 1, 2, 10, 11, 12]
        assert (parent[-1].status, parent[-1].sent) == ("ok", 7)
        assert child[0].session != parent[0].session

    def test_forked_child_starts_its_collectors_afresh(self, ipc_receiver):
        """A timing measured before the fork and not yet flushed is sent by the parent only; the child's collectors
        start empty: its own timing, and run_end counting its readouts from zero."""
        events, done = run_trainer("fork_collectors", ipc_receiver, sessions=2)
        assert done.returncode == 0, done.stderr
        child_pid = int(done.stdout.split()[1])
        sessions = by_session(events)
        child = next(s for s in sessions.values() if s[0].pid == child_pid)
        parent = next(s for s in sessions.values() if s[0].pid == done.pid)
        assert [(e.step, e.phases_ms.keys()) for e in child if e.kind == "step_timing"] == [(100, {"child"})]
        assert [(e.step, e.phases_ms.keys()) for e in parent if e.kind == "step_timing"] == [(2, {"parent"})]
        assert (child[-1].kind, child[-1].readouts_dropped) == ("run_end", 0)
        assert (parent[-1].kind, parent[-1].readouts_dropped) == ("run_end", 0)

    def test_forked_child_that_never_emits_sends_nothing(self, ipc_receiver):
        """A forked child that exits without emitting sends nothing (not even the parent's pending events), and the parent is unharmed."""
        events, done = run_trainer("fork_silent", ipc_receiver)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[2] == "0"  # the child exited cleanly
        late = [e for data in ipc_receiver.drain() for e in ipc_receiver.events_of(data)]
        assert len(by_session(events + late)) == 1
        assert [e.seq for e in events] == list(range(8))
        assert [e.step for e in events if e.kind == "lstm_health"] == [0, 1, 2, 10, 11, 12]
        assert events[0].pid == done.pid


class TestSigterm:
    def test_sigterm_sends_pending_events_and_run_end_then_dies_as_by_default(self, tmp_path):
        """A trainer preempted with SIGTERM still delivers its last events and run_end 'interrupted'."""
        import signal as _signal
        import subprocess as _subprocess
        import sys as _sys

        import zmq as _zmq

        from simic.schemas import decode_message as _decode

        endpoint = f"ipc://{tmp_path}/t.ipc" if len(str(tmp_path)) < 90 else "tcp://127.0.0.1:5593"
        ctx = _zmq.Context()
        pull = ctx.socket(_zmq.PULL)
        pull.bind(endpoint)
        script = (
            "import sys, time\n"
            "from simic.producer import Emitter\n"
            f"e = Emitter({endpoint!r}, run_id='term')\n"
            "e.emit('step_timing', step=7, phases_ms={'update': 1.0})\n"  # pending, not flushed
            "print('ready', flush=True)\n"
            "time.sleep(600)\n"
        )
        proc = _subprocess.Popen([_sys.executable, "-c", script], stdout=_subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(_signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        events = []
        while pull.poll(5000):
            events.extend(_decode(pull.recv()).events)
            if events and events[-1].kind == "run_end":
                break
        pull.close(0)
        ctx.term()
        assert code == -_signal.SIGTERM
        assert [e.kind for e in events] == ["run_start", "step_timing", "run_end"]
        assert events[-1].status == "interrupted" and events[-1].error == "SIGTERM"


HOOK_CALLS = {"os.register_at_fork", "atexit.register", "signal.signal"}


class TestOneModule:
    def test_only_process_hooks_installs_process_hooks(self):
        """atexit, signal handlers, sys.excepthook and at-fork handlers are installed in producer/process_hooks.py
        only, and the at-fork handler once: one fork registry."""
        root = Path(__file__).parents[2] / "producer"
        found: dict[str, list[str]] = {}
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                    name = f"{node.func.value.id}.{node.func.attr}"
                elif isinstance(node, ast.Assign) and any(ast.unparse(t) == "sys.excepthook" for t in node.targets):
                    name = "sys.excepthook ="
                else:
                    continue
                if name in HOOK_CALLS or name == "sys.excepthook =":
                    found.setdefault(path.relative_to(root).as_posix(), []).append(name)
        assert set(found) == {"process_hooks.py"}, found
        assert found["process_hooks.py"].count("os.register_at_fork") == 1

    def test_fork_registry_runs_callbacks_in_order_and_forgets_collected_objects(self):
        """In the child, before its own code: the registered callbacks in registration order; a bound method whose
        object was garbage collected is not called (the registry holds it weakly); the parent runs none."""
        script = (
            "import gc, os\n"
            "from simic.producer import process_hooks\n"
            "calls = []\n"
            "class Owner:\n"
            "    def __init__(self, name): self.name = name\n"
            "    def renew(self): calls.append(self.name)\n"
            "process_hooks.after_fork_in_child(lambda: calls.append('function'))\n"
            "kept, gone = Owner('kept'), Owner('gone')\n"
            "process_hooks.after_fork_in_child(kept.renew)\n"
            "process_hooks.after_fork_in_child(gone.renew)\n"
            "del gone; gc.collect()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    print('child', calls, flush=True); os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "print('parent', calls, flush=True)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["child ['function', 'kept']", "parent []"]
