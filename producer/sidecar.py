"""A ``simic-consumer`` started by the trainer itself, as wandb starts its service.

::

    sidecar = spawn_consumer(log_dir="runs/ppo-42/telemetry")   # reuses one already listening, else starts one
    with Emitter(sidecar.endpoint, run_id="ppo-42") as emitter:
        ...
    sidecar.close()                                             # SIGTERM, bounded wait (no-op if reused)

or in one step, ``Emitter(None, run_id="ppo-42", spawn_consumer=True)`` (or a mapping of the keyword
arguments below instead of ``True``): the emitter starts the sidecar and stops it when it closes,
after the consumer has logged the end of the run.

Lifecycle: :func:`spawn_consumer` returns once the consumer has printed its startup lines (its
``pid``, ``listening on``, then ``logging to``), so events sent from then on are received. The
consumer runs in its own session (a terminal's Ctrl-C reaches the trainer, which then sends its last
events, not the consumer). :meth:`Sidecar.close` sends SIGTERM (the consumer drains, checkpoints and
exits 0), waits at most ``stop_timeout_s`` and then kills it; it is safe to call twice, and does
nothing in a forked child or for a consumer that was already running.

The sidecar dies with its trainer, however the trainer dies: it is started with ``--exit-with-pid``
and this process's pid, watches it (a pidfd on Linux 5.3 and later, else a poll every 0.2 s) and,
when the trainer has exited without closing it (``os._exit``, SIGKILL, the OOM killer, a segfault),
raises the ``producer_exited`` alert about each session the trainer left without ``run_end`` (in the
event log too, so a replay raises it), drains, checkpoints and exits 0, typically within half a second.
The private socket directory goes with it (``--remove-dir-at-exit``): no process and no temporary
directory is left behind.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence, TextIO

from simic.schemas.transport import ENDPOINT_ENV, alerts_endpoint_for, ipc_path

__all__ = ["Sidecar", "spawn_consumer", "is_listening"]

IN_USE = " is in use by "
"""What a consumer refusing an endpoint another one holds prints (``simic.consumer.daemon.claim.EndpointInUse``)."""


def is_listening(endpoint: str, timeout_s: float = 0.5) -> bool:
    """Whether something accepts connections at an ``ipc://`` or ``tcp://`` endpoint (a plain connect)."""
    path = ipc_path(endpoint)
    try:
        if path is not None:
            if not path.exists():
                return False
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s)
                sock.connect(str(path))
            return True
        if endpoint.startswith("tcp://"):
            host, _, port = endpoint[len("tcp://"):].rpartition(":")
            if not port.isdigit():
                return False
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
    except OSError:
        return False
    return False


class _Output:
    """The consumer's output lines (the last ``keep``), with a way to wait for one."""

    def __init__(self, keep: int = 1000) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.count = 0
        """Lines seen since the start (``lines`` holds the last ones)."""
        self.ended = False
        self._changed = threading.Condition()

    def add(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self.count += 1
            self._changed.notify_all()

    def end(self) -> None:
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, match: Callable[[str], bool], start: int, timeout_s: float) -> tuple[str | None, int]:
        """The first line from number ``start`` on that ``match``es, and the number after it; (None, count)
        when the output ended or ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                first = self.count - len(self.lines)
                for i in range(max(start, first), self.count):
                    line = self.lines[i - first]
                    if match(line):
                        return line, i + 1
                start = self.count
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    return None, start
                self._changed.wait(left)


class Sidecar:
    """A ``simic-consumer run`` this process started (or found running). Made by :func:`spawn_consumer`.

    Attributes:
        endpoint: where the consumer receives events.
        alerts_endpoint: where it publishes alerts (what ``Emitter.poll_alerts`` reads), or None.
        log_dir: its log directory (None for a consumer that was already running).
        process: the ``subprocess.Popen`` of the consumer (None when it was already running).
    """

    def __init__(self, endpoint: str, alerts_endpoint: str | None, log_dir: Path | None,
                 process: subprocess.Popen | None = None, output: _Output | None = None, private_dir: str | None = None) -> None:
        self.endpoint = endpoint
        self.alerts_endpoint = alerts_endpoint
        self.log_dir = log_dir
        self.process = process
        self._output = output or _Output()
        self._owner = os.getpid()
        self._closed = False
        self._private_dir = private_dir  # made for the socket: removed once the consumer has exited

    @property
    def pid(self) -> int | None:
        """The consumer's process id (None when it was already running)."""
        return None if self.process is None else self.process.pid

    @property
    def spawned(self) -> bool:
        """Whether this process started the consumer (and so stops it)."""
        return self.process is not None

    @property
    def lines(self) -> list[str]:
        """The consumer's latest output lines (the last 1000)."""
        return list(self._output.lines)

    @property
    def returncode(self) -> int | None:
        """The consumer's exit status once it has exited (None while running, or when not spawned)."""
        return None if self.process is None else self.process.poll()

    def wait_for_line(self, text: str, timeout_s: float = 10.0) -> str | None:
        """A line of the consumer's output containing ``text``: among those printed so far (the last
        1000), else the next one. Waits at most ``timeout_s``; None if none came (or it exited)."""
        line, _ = self._output.wait_for(lambda line: text in line, 0, timeout_s)
        return line

    def close(self, *, after_line: str | None = None, after_timeout_s: float = 5.0, stop_timeout_s: float = 15.0) -> int | None:
        """Stop a spawned consumer: SIGTERM, then at most ``stop_timeout_s`` for it to drain and exit,
        then SIGKILL. ``after_line``: first wait (at most ``after_timeout_s``) for an output line
        containing it, e.g. the consumer's note that a run ended, so nothing sent is cut off.
        Returns the exit status (None when there was nothing to stop)."""
        if self._closed or self.process is None or os.getpid() != self._owner:
            return None
        self._closed = True
        if after_line and self.process.poll() is None:
            self.wait_for_line(after_line, after_timeout_s)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        return code

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        how = f"pid {self.pid}" if self.spawned else "already running"
        return f"Sidecar({self.endpoint!r}, {how})"


def spawn_consumer(
    endpoint: str | None = None,
    *,
    log_dir: str | os.PathLike[str] = "simic-logs",
    args: Sequence[str] = (),
    command: Sequence[str] | None = None,
    echo: TextIO | Callable[[str], None] | None = None,
    startup_timeout_s: float = 30.0,
) -> Sidecar:
    """Start ``simic-consumer run`` for this trainer, unless a consumer already listens at ``endpoint``.

    Args:
        endpoint: where the consumer should listen. When something already listens there, it is used
            and nothing is started; so too when another trainer's consumer binds it while this one
            starts (a consumer refuses an endpoint another one holds). None: ``$SIMIC_ENDPOINT`` when set, else a new private ipc socket
            (in a fresh 0700 directory), so two trainers never share a sidecar by accident.
        log_dir: the started consumer's ``--log-dir``.
        args: more ``simic-consumer run`` arguments (``["--config", "rules.toml"]``, ``["--metrics-port", "0"]``).
        command: how to run the consumer (default: this Python, ``-m simic.consumer``). It is given
            ``--exit-with-pid`` with this process's pid (and ``--remove-dir-at-exit`` for a private
            socket directory), so it must run on this host, in this pid namespace.
        echo: where the consumer's output lines go besides ``Sidecar.lines``: a text stream
            (written with a ``[simic-consumer]`` prefix) or a callable given each line.
        startup_timeout_s: longest wait for the consumer's startup lines.

    Raises:
        RuntimeError: the consumer exited during startup or did not start in time (with its output).
    """
    if endpoint is None:
        endpoint = os.environ.get(ENDPOINT_ENV, "").strip() or None
    if endpoint is not None and is_listening(endpoint):
        return Sidecar(endpoint, alerts_endpoint_for(endpoint), None)
    private_dir = None
    if endpoint is None:
        private_dir = tempfile.mkdtemp(prefix="simic-sidecar-")
        endpoint = f"ipc://{private_dir}/consumer.ipc"

    log_dir = Path(log_dir)
    lifecycle = ["--exit-with-pid", str(os.getpid())]  # it stops, after saying so, when this process dies
    if private_dir is not None:
        lifecycle += ["--remove-dir-at-exit", private_dir]  # and removes the socket directory then
    argv = [*(command or (sys.executable, "-m", "simic.consumer")), "run", "--bind", endpoint, "--log-dir", str(log_dir),
            *lifecycle, *args]
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        start_new_session=True,  # Ctrl-C in the terminal stops the trainer, which then stops its sidecar
    )
    output = _Output()
    threading.Thread(target=_pump, args=(process, output, _echo_to(echo)), name="simic-sidecar-output", daemon=True).start()
    sidecar = Sidecar(endpoint, None, log_dir, process, output, private_dir)

    # Startup: "pid N, ...", "listening on EP", "publishing alerts on EP" (unless off), ..., "logging to DIR" (last).
    startup = ("listening on ", "publishing alerts on ", "logging to ")
    deadline = time.monotonic() + startup_timeout_s
    seen = 0
    while True:
        line, seen = output.wait_for(lambda line: any(text in line for text in startup), seen, deadline - time.monotonic())
        if line is None:
            if process.poll() is None and not output.ended:
                sidecar.close(stop_timeout_s=5.0)
                raise RuntimeError(f"simic-consumer did not start within {startup_timeout_s} s:\n" + "".join(output.lines))
            sidecar.close()
            if any(IN_USE in line for line in output.lines) and _listens_soon(endpoint, deadline):
                # Another trainer's consumer claimed this endpoint between our check and our start: use it.
                return Sidecar(endpoint, alerts_endpoint_for(endpoint), None)
            raise RuntimeError(f"simic-consumer exited with {process.returncode} during startup:\n" + "".join(output.lines))
        if "listening on " in line:
            sidecar.endpoint = line.rsplit("listening on ", 1)[1].strip()
        elif "publishing alerts on " in line:
            sidecar.alerts_endpoint = line.rsplit("publishing alerts on ", 1)[1].strip()
        else:
            return sidecar


def _listens_soon(endpoint: str, deadline: float) -> bool:
    """Whether ``endpoint`` listens before ``deadline`` (a consumer that holds it may still be starting)."""
    while not is_listening(endpoint):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _echo_to(echo: TextIO | Callable[[str], None] | None) -> Callable[[str], None] | None:
    if echo is None or callable(echo):
        return echo

    def write(line: str) -> None:
        echo.write(f"[simic-consumer] {line}")
        echo.flush()

    return write


def _pump(process: subprocess.Popen, output: _Output, echo: Callable[[str], None] | None) -> None:
    """Read the consumer's output for its whole life (an unread pipe would block it when full)."""
    assert process.stdout is not None
    for line in process.stdout:
        output.add(line)
        if echo is not None:
            try:
                echo(line)
            except Exception:  # a broken echo must not stop the reading
                echo = None
    output.end()
