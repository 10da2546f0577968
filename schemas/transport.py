"""Where producer and consumer meet: endpoints and the CurveZMQ key files, for both sides.

Endpoints: the default is an ipc socket inside a directory only the current user can enter (0700):
under ``$XDG_RUNTIME_DIR/simic`` when that is set, else ``/tmp/simic-<uid>``. TCP endpoints are for
loopback unless the consumer has CurveZMQ keys (or the operator explicitly opts out). The alerts
endpoint sits next to the events endpoint by convention.

Keys: pyzmq's certificate format. ``simic-consumer keygen`` writes a pair (:func:`write_key_pair`),
producers load theirs (:class:`CurveClientKeys`), the consumer loads its own and the allow-list of
client public keys (:func:`load_allowed_keys`); every file is read by :func:`read_key_file`. What the
consumer does with them (its authenticator, counted handshake failures) is ``simic.consumer.daemon.security``.

Imports: the standard library; ``zmq`` only inside the key functions (a producer without keys never needs it).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ENDPOINT_ENV",
    "RUN_ID_ENV",
    "runtime_dir",
    "default_endpoint",
    "alerts_endpoint_for",
    "is_loopback",
    "ipc_path",
    "CURVE_SERVER_KEY_ENV",
    "CURVE_CLIENT_KEY_ENV",
    "KeyFileError",
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "read_key_file",
    "write_key_pair",
    "load_allowed_keys",
    "CurveClientKeys",
]

ENDPOINT_ENV = "SIMIC_ENDPOINT"
"""Environment variable naming the consumer's endpoint (unset: telemetry off)."""
RUN_ID_ENV = "SIMIC_RUN_ID"
"""Environment variable naming the run."""
CURVE_SERVER_KEY_ENV = "SIMIC_CURVE_SERVER_KEY"
"""Environment variable: the consumer's public key file (``NAME.key``), for producers."""
CURVE_CLIENT_KEY_ENV = "SIMIC_CURVE_CLIENT_KEY"
"""Environment variable: this producer's secret key file (``NAME.key_secret``)."""

PUBLIC_SUFFIX = ".key"
"""A public key file: ``NAME.key`` (copied to the peers that trust it, or into an allow-list)."""
SECRET_SUFFIX = ".key_secret"
"""A secret key file: ``NAME.key_secret`` (0600, stays with its owner)."""
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

log = logging.getLogger("simic")


def runtime_dir(create: bool = True) -> Path:
    """The private (0700) directory that holds the default ipc socket."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "simic" if base else Path(tempfile.gettempdir()) / f"simic-{os.getuid()}"
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_uid != os.getuid():
            raise PermissionError(f"{path} belongs to another user; set {ENDPOINT_ENV} or --bind")
        if stat.S_IMODE(info.st_mode) & 0o077:
            path.chmod(0o700)
    return path


def default_endpoint() -> str:
    """``ipc://<runtime dir>/consumer.ipc``: private to this user, no network exposure."""
    return f"ipc://{runtime_dir() / 'consumer.ipc'}"


def ipc_path(endpoint: str) -> Path | None:
    """The filesystem path of an ``ipc://`` endpoint, else None."""
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


def is_loopback(endpoint: str) -> bool:
    """True for ipc and inproc endpoints and for TCP bound to a loopback address or localhost."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def alerts_endpoint_for(endpoint: str) -> str | None:
    """Where a consumer bound at ``endpoint`` publishes its alerts, by convention.

    ``ipc:///d/consumer.ipc`` -> ``ipc:///d/consumer-alerts.ipc``; ``tcp://h:5557`` -> ``tcp://h:5558``.
    None when there is no convention (a wildcard port).
    """
    path = ipc_path(endpoint)
    if path is not None:
        return f"ipc://{path.with_name(path.stem + '-alerts' + path.suffix)}"
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://") :].rpartition(":")
        if port.isdigit():
            return f"tcp://{host}:{int(port) + 1}"
    return None


def read_key_file(path: str | os.PathLike[str], *, secret: bool) -> tuple[bytes, bytes | None]:
    """The z85 ``(public, secret)`` keys of a key file; ``secret=True`` requires the secret key.

    Raises ValueError naming the file and what is wrong with it. A secret key file that other
    users can read is used, with a warning (as mounted secrets often are 0644).
    """
    import zmq.auth
    from zmq.utils import z85

    try:
        with open(path, "rb"):  # the precise reason (missing, permission) rather than pyzmq's generic one
            pass
        public, secret_key = zmq.auth.load_certificate(os.fspath(path))
    except OSError as error:
        raise ValueError(f"cannot read CurveZMQ key file {path}: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a CurveZMQ key file (write one with `simic-consumer keygen`)") from None
    for key in filter(None, (public, secret_key)):
        try:
            valid = len(key) == 40 and len(z85.decode(key)) == 32
        except Exception:  # bad characters, or a value that overflows a 32-bit word
            valid = False
        if not valid:
            raise ValueError(f"{path} holds a malformed CurveZMQ key (40 z85 characters expected)")
    if secret:
        if secret_key is None:
            raise ValueError(f"{path} holds no secret key: pass the NAME.key_secret file that `simic-consumer keygen` wrote")
        if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
            log.warning("secret key file %s is readable by other users: chmod 600 it", path)
    return public, secret_key


class KeyFileError(ValueError):
    """A key file or the allow-list directory is unusable; the message names it and says why."""


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (0600) with pyzmq's ``create_certificates``.

    The directory is created 0700. An existing pair is never overwritten: both files are first
    created exclusively (``O_EXCL``), so a concurrent keygen cannot race past the check.
    Returns the public file, the secret file and the public key (z85).
    """
    import zmq.auth

    if not _KEY_NAME.fullmatch(name):
        raise KeyFileError(f"invalid key name {name!r}: use letters, digits, '.', '_' and '-' (a file name, no path)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    created: list[Path] = []
    try:
        for path in (secret, public):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            created.append(path)
        zmq.auth.create_certificates(directory, name)  # rewrites the files in place: their modes stay
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)  # a public key is meant to be copied
    except FileExistsError as error:
        for path in created:
            path.unlink()
        raise KeyFileError(f"{error.filename} already exists: refusing to overwrite a key pair "
                            "(choose another --name or directory, or remove the old pair first)") from None
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    key, _ = read_key_file(public, secret=False)
    return public, secret, key.decode("ascii")


def load_allowed_keys(directory: Path) -> dict[bytes, str]:
    """The allowed client keys: every ``*.key`` file in ``directory``, as ``{z85 key: file name}``."""
    if not directory.is_dir():
        raise KeyFileError(f"--curve-allow {directory}: no such directory")
    allowed: dict[bytes, str] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            key, _ = read_key_file(path, secret=False)
        except ValueError as error:
            raise KeyFileError(f"--curve-allow: {error}") from None
        allowed[key] = path.name
    if not allowed:
        raise KeyFileError(f"--curve-allow {directory} holds no public key file (*{PUBLIC_SUFFIX}): no peer could connect. "
                            "Copy there the NAME.key files of the producers and subscribers to allow.")
    if any(directory.glob(f"*{SECRET_SUFFIX}")):
        log.warning("%s holds secret key files (*%s): only public keys belong in an allow-list", directory, SECRET_SUFFIX)
    return allowed


@dataclass(frozen=True, repr=False)
class CurveClientKeys:
    """A CurveZMQ client's keys: the server's public key and this peer's own pair (z85)."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def load(cls, server_key_file: str | os.PathLike[str], client_key_file: str | os.PathLike[str]) -> "CurveClientKeys":
        """From the consumer's public key file and this peer's secret key file. Raises ValueError."""
        server_key, _ = read_key_file(server_key_file, secret=False)
        public_key, secret_key = read_key_file(client_key_file, secret=True)
        assert secret_key is not None
        return cls(server_key, public_key, secret_key)

    def apply(self, sock: Any) -> None:
        """Make a ZeroMQ socket a CURVE client of that server (before it connects)."""
        import zmq

        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)

    def __repr__(self) -> str:  # the secret key stays out of logs and tracebacks
        return f"CurveClientKeys(server_key={self.server_key.decode()!r}, public_key={self.public_key.decode()!r})"
