"""A daemon that lives and dies with another process (``simic-consumer run --exit-with-pid``).

A sidecar started by its trainer (``simic.producer.spawn_consumer``) watches the trainer's pid.
When the trainer exits, however it exits (``os._exit``, SIGKILL, the OOM killer), the daemon
records the exit in its event log as a clock tick that carries a note (``{"exited": {"pid": N,
"host": H}}``), so the ``producer_exited`` rule raises the same alert live and in replay; then it
stops as on SIGTERM (drain, checkpoint, exit 0) and removes the private directory it was given
(``--remove-dir-at-exit``).

The watch is a pidfd (Linux 5.3 and later) read by the event loop: it cannot mistake a new process
that got the same pid for the old one. Elsewhere the pid is polled every ``poll_interval_s`` with
``os.kill(pid, 0)``, and the process start time in ``/proc/PID/stat`` (where there is one) tells a
reused pid and a zombie from the watched process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import stat
from pathlib import Path

import msgpack

__all__ = ["ProcessGone", "ProcessWatch", "exit_note", "parse_note", "remove_private_dir", "detach_closed_output", "host_name"]

log = logging.getLogger("simic.consumer")

MAX_NOTE_BYTES = 4096
"""A tick's note is small; anything longer in a log is not one of ours and is ignored."""


class ProcessGone(RuntimeError):
    """The process to watch is not running (it exited before the daemon started)."""


def host_name() -> str:
    """This host's name as producers report it in ``run_start`` (``socket.gethostname()``, 128 characters at most)."""
    return socket.gethostname()[:128] or "unknown"


def _start_time(pid: int) -> str | None:
    """The process start time (field 22 of /proc/PID/stat) and whether it is a zombie; None without /proc."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields and fields[0] in (b"Z", b"X"):  # exited, not yet reaped by its parent
        raise ProcessLookupError(pid)
    return fields[19].decode() if len(fields) > 19 else None


class ProcessWatch:
    """Watches one process until it exits. Opening raises :class:`ProcessGone` if it is not running."""

    def __init__(self, pid: int, *, poll_interval_s: float = 0.2) -> None:
        if pid <= 0:
            raise ValueError(f"not a process id: {pid}")
        self.pid = pid
        self.poll_interval_s = poll_interval_s
        self.fd: int | None = None
        self._started: str | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                self.fd = pidfd_open(pid)
            except ProcessLookupError:
                raise ProcessGone(f"process {pid} is not running") from None
            except OSError:  # kernel before 5.3, or a seccomp filter: poll instead
                self.fd = None
        if self.fd is not None and not self.alive():
            self.close()  # a zombie: it has exited already
            raise ProcessGone(f"process {pid} is not running (it has exited)")
        if self.fd is None:
            try:
                os.kill(pid, 0)
                self._started = _start_time(pid)
            except ProcessLookupError:
                raise ProcessGone(f"process {pid} is not running") from None
            except PermissionError:  # it exists, owned by someone else
                pass

    @property
    def how(self) -> str:
        return "pidfd" if self.fd is not None else f"polling every {self.poll_interval_s:g} s"

    def alive(self) -> bool:
        if self.fd is not None:
            return not select.select([self.fd], [], [], 0)[0]  # readable once the process has exited
        try:
            os.kill(self.pid, 0)
            started = _start_time(self.pid)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return self._started is None or started is None or started == self._started  # else: the pid was reused

    async def wait(self) -> None:
        """Return once the process has exited."""
        loop = asyncio.get_running_loop()
        if self.fd is not None:
            exited = loop.create_future()
            loop.add_reader(self.fd, lambda: exited.done() or exited.set_result(None))
            try:
                await exited
            finally:
                loop.remove_reader(self.fd)
            return
        while self.alive():
            await asyncio.sleep(self.poll_interval_s)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def exit_note(pid: int, host: str) -> bytes:
    """The payload of the tick that records a watched process's exit in the event log."""
    return msgpack.packb({"exited": {"pid": pid, "host": host}})


def parse_note(payload: bytes) -> tuple[str, int] | None:
    """``(host, pid)`` of the exited process a tick's payload records; None for a plain tick or anything else."""
    if not payload or len(payload) > MAX_NOTE_BYTES:
        return None
    try:
        note = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        exited = note["exited"]
        pid, host = exited["pid"], exited["host"]
    except Exception:
        return None
    if type(pid) is not int or not isinstance(host, str) or pid <= 0:
        return None
    return host, pid


def detach_closed_output() -> None:
    """Point stdout and stderr at /dev/null where they are pipes whose reader is gone.

    A sidecar's output is a pipe read by its trainer; once the trainer has died, a write there
    fails (EPIPE) and Python's flush at exit would turn exit status 0 into 120. Poll reports
    POLLERR on the write end of a pipe that has no reader left."""
    poller = select.poll()
    for fd in (1, 2):
        try:
            poller.register(fd, 0)
        except (OSError, ValueError):
            continue
    broken = {fd for fd, events in poller.poll(0) if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL)}
    if not broken:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in broken:
            os.dup2(null, fd)
    finally:
        os.close(null)


def remove_private_dir(directory: Path) -> bool:
    """Remove a directory that holds nothing but sockets (or nothing). Anything else in it, it is
    left alone and a warning says why. Returns whether it is gone."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return True
    except OSError as error:
        log.warning("not removing %s: %s", directory, error)
        return False
    others = [entry.name for entry in entries if not stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode)]
    if others:
        log.warning("not removing %s: it holds more than sockets (%s)", directory, ", ".join(sorted(others)[:5]))
        return False
    try:
        for entry in entries:
            os.unlink(entry.path)
        os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("could not remove %s: %s", directory, error)
        return False
    return True


def check_private_dir(directory: Path) -> str | None:
    """Why ``directory`` cannot be given to ``--remove-dir-at-exit`` (None: it can): it must be a real
    directory (not a link), owned by this user, and hold nothing but sockets."""
    try:
        info = os.lstat(directory)
    except OSError as error:
        return f"{directory}: {error.strerror or error}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{directory} is not a directory"
    if info.st_uid != os.getuid():
        return f"{directory} is not owned by this user"
    try:
        for entry in os.scandir(directory):
            if not stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                return f"{directory} holds {entry.name!r}: only a private directory of sockets is removed at exit"
    except OSError as error:
        return f"{directory}: {error.strerror or error}"
    return None
