"""Where producer and consumer meet: the default endpoint and the rules for choosing one.

The default is an ipc socket inside a directory only the current user can enter (0700): under
``$XDG_RUNTIME_DIR/simic`` when that is set, else ``/tmp/simic-<uid>``. TCP endpoints are for
loopback unless the operator explicitly asks for more.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "ENDPOINT_ENV",
    "RUN_ID_ENV",
    "runtime_dir",
    "default_endpoint",
    "alerts_endpoint_for",
    "is_loopback",
    "ipc_path",
]

ENDPOINT_ENV = "SIMIC_ENDPOINT"
"""Environment variable naming the consumer's endpoint (unset: telemetry off)."""
RUN_ID_ENV = "SIMIC_RUN_ID"
"""Environment variable naming the run."""


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
