"""One daemon per endpoint: a ``simic-consumer run`` claims its endpoints before it binds them.

ZeroMQ's ipc bind replaces a socket file that exists, live or not: a second daemon started on the
same ``ipc://`` path would take the endpoint over and the first would receive nothing more, without
a word. So the daemon claims each endpoint it binds (events and alerts) first::

    ipc:///d/c.ipc   lock file /d/c.ipc.lock: flock(LOCK_EX | LOCK_NB), then our pid written in it
                     held       -> EndpointInUse naming the pid in the lock file
                     free, and a connect to /d/c.ipc succeeds -> EndpointInUse (a listener that
                                   holds no lock: an older daemon, another program), its pid from /proc
                     free, and the socket refuses   -> a stale socket of a dead daemon: removed
    tcp://h:port     a plain bind of (h, port) with SO_REUSEADDR, as libzmq binds, closed at once
                     EADDRINUSE -> EndpointInUse naming the listener's pid from /proc

The lock is held for the daemon's life (the kernel drops it when the process dies, however it
dies); :meth:`EndpointClaim.release` removes the lock file and the daemon's own socket file at a
normal exit. A tcp claim is only a check: a daemon starting at the same moment can still win the
bind, and the bind's own EADDRINUSE is turned into the same :class:`EndpointInUse` (see
:func:`in_use_error`). Holders are found through ``/proc`` (the lock file, ``/proc/net/unix``,
``/proc/net/tcp``); where that is not readable the message says the pid is unknown.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from simic.schemas.transport import ipc_path

__all__ = ["EndpointInUse", "EndpointClaim", "claim_endpoint", "in_use_error"]


class EndpointInUse(RuntimeError):
    """Another process holds the endpoint: this daemon must not start there."""

    def __init__(self, endpoint: str, pid: int | None, detail: str = "", *, role: str = "endpoint") -> None:
        self.endpoint = endpoint
        self.pid = pid
        holder = f"process {pid}" if pid is not None else "another process (its pid could not be found)"
        command = _command_line(pid) if pid is not None else None
        if command:
            holder += f" ({command})"
        message = f"{role} {endpoint} is in use by {holder}"
        if detail:
            message += f"; {detail}"
        super().__init__(message + "; not starting (one daemon per endpoint: stop that one, or bind another endpoint)")


class EndpointClaim:
    """What :func:`claim_endpoint` holds for one endpoint until :meth:`release`."""

    def __init__(self, endpoint: str, *, lock_fd: int | None = None, lock_path: Path | None = None, reclaimed: str | None = None) -> None:
        self.endpoint = endpoint
        self.reclaimed = reclaimed
        """A line saying which stale socket was removed (None when there was none)."""
        self._lock_fd = lock_fd
        self._lock_path = lock_path
        self._socket_inode: int | None = None

    def bound(self) -> None:
        """Note the socket file the bind made (for an ipc endpoint), so :meth:`release` removes only that one."""
        path = ipc_path(self.endpoint)
        if path is not None and self._lock_fd is not None:
            try:
                self._socket_inode = os.lstat(path).st_ino
            except OSError:
                self._socket_inode = None

    def release(self) -> None:
        """Remove our socket file and the lock file, then drop the lock. Safe to call twice."""
        if self._lock_fd is None:
            return
        path = ipc_path(self.endpoint)
        if path is not None and self._socket_inode is not None:
            try:
                if os.lstat(path).st_ino == self._socket_inode:
                    path.unlink()
            except OSError:
                pass
        try:
            if self._lock_path is not None:
                self._lock_path.unlink()  # while we hold it: whoever opens it next makes a new one
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None


def claim_endpoint(endpoint: str, *, role: str = "endpoint") -> EndpointClaim:
    """Claim ``endpoint`` for this process, or raise :class:`EndpointInUse` naming the holder.

    ``role`` names the endpoint in the message ("endpoint", "alerts endpoint"). Endpoints other than
    ``ipc://`` paths and ``tcp://`` with a port number (a port chosen by the system, inproc, an
    abstract ipc name) cannot be taken over and are not checked.
    """
    path = ipc_path(endpoint)
    if path is not None and not str(path).startswith("@"):
        return _claim_ipc(endpoint, path, role)
    if endpoint.startswith("tcp://"):
        _check_tcp(endpoint, role)
    return EndpointClaim(endpoint)


def in_use_error(endpoint: str, error: BaseException, *, role: str = "endpoint") -> EndpointInUse | None:
    """The :class:`EndpointInUse` a failed bind means (EADDRINUSE), or None for any other failure."""
    if getattr(error, "errno", None) != errno.EADDRINUSE:
        return None
    return EndpointInUse(endpoint, _tcp_listener_pid(endpoint) if endpoint.startswith("tcp://") else None, role=role)


# -- ipc -------------------------------------------------------------------------------------------


def _claim_ipc(endpoint: str, path: Path, role: str) -> EndpointClaim:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = _lock(lock_path, endpoint, role)
    try:
        previous = _read_pid(fd)
        reclaimed = _check_socket_file(endpoint, path, role, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return EndpointClaim(endpoint, lock_fd=fd, lock_path=lock_path, reclaimed=reclaimed)


def _lock(lock_path: Path, endpoint: str, role: str) -> int:
    """An fd of ``lock_path`` holding its exclusive flock."""
    for _ in range(100):  # another daemon removing the file as we open it: open the new one
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd) or _flock_holder(os.fstat(fd).st_ino)
            os.close(fd)
            raise EndpointInUse(endpoint, holder, role=role) from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its holder had just removed on its way out
    raise RuntimeError(f"cannot lock {lock_path}: it keeps being replaced")


def _check_socket_file(endpoint: str, path: Path, role: str, previous: int | None) -> str | None:
    """Refuse a live listener or something that is no socket; remove a stale socket. Returns what was reclaimed."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(mode):  # libzmq's bind would delete it: never bind over a file of the user's
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket; not binding {endpoint} over it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: stale
        else:
            raise EndpointInUse(endpoint, _unix_listener_pid(path), "it holds no lock file", role=role)
    path.unlink(missing_ok=True)
    who = f" (left by process {previous}, no longer running)" if previous else ""
    return f"removed the stale socket {path}{who}"


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _flock_holder(inode: int) -> int | None:
    """The pid holding a flock on the file with this inode, from /proc/locks."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return int(fields[4]) if fields[4].isdigit() else None
    return None


def _unix_listener_pid(path: Path) -> int | None:
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()  # Num RefCount Protocol Flags Type St Inode Path
        if len(fields) >= 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            return _socket_owner(int(fields[6]))
    return None


# -- tcp -------------------------------------------------------------------------------------------


def _host_port(endpoint: str) -> tuple[str, int] | None:
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if not port.isdigit() or not host:
        return None
    host = host.strip("[]")
    return ("0.0.0.0" if host == "*" else host), int(port)


def _check_tcp(endpoint: str, role: str) -> None:
    address = _host_port(endpoint)
    if address is None:
        return
    try:
        infos = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)
    except OSError:
        return  # an interface name or the like: the bind itself will tell
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq: a TIME_WAIT left by a dead daemon is no holder
        try:
            probe.bind(sockaddr)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise EndpointInUse(endpoint, _tcp_listener_pid(endpoint), role=role) from None
            # Any other reason (an address this host does not have, ...): the bind itself says it.


def _tcp_listener_pid(endpoint: str) -> int | None:
    address = _host_port(endpoint)
    if address is None:
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()  # sl local_address rem_address st ... uid timeout inode
            if len(fields) >= 10 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == address[1]:
                owner = _socket_owner(int(fields[9]))
                if owner is not None:
                    return owner
    return None


# -- /proc -----------------------------------------------------------------------------------------


def _socket_owner(inode: int) -> int | None:
    """The process with an open fd on socket ``inode`` (only processes this user may look into)."""
    target = f"socket:[{inode}]"
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
            except OSError:
                continue
    return None


def _command_line(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    words = [word.decode(errors="replace") for word in raw.split(b"\0") if word]
    text = " ".join(words)
    return text if len(text) <= 160 else text[:157] + "..."
