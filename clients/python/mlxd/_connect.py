"""Where the daemon is and whether to trust it: the socket path (as the Rust client and
the daemon decide it), the server's peer credentials, the ``mlxd stdio`` fallback, and
the retry policy for Busy refusals. No protocol here: the clients use these before and
around the handshake.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import random
import shutil
import socket
import struct
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import UntrustedServerError

#: Environment variable naming the socket path.
SOCKET_ENV = "MLXD_SOCKET"
#: Uids (comma-separated) of other users whose daemon this client talks to.
TRUSTED_UIDS_ENV = "MLXD_TRUSTED_UIDS"
#: Set (to anything but "" or "0") to turn the stdio fallback off by default.
NO_FALLBACK_ENV = "MLXD_NO_FALLBACK"
#: The ``mlxd`` binary the fallback starts.
BIN_ENV = "MLXD_BIN"

_MACOS: bool = sys.platform == "darwin"
SYSTEM_SOCKET_PATH = "/var/run/mlxd.sock" if _MACOS else "/run/mlxd/mlxd.sock"


def _warn(text: str) -> None:
    print(f"mlxd-client: {text}", file=sys.stderr, flush=True)


# -- The socket path -----------------------------------------------------------------------


def default_socket_path(uid: int) -> str:
    """``$MLXD_SOCKET``, else ``$XDG_RUNTIME_DIR/mlxd/mlxd.sock`` (if absolute), else
    ``/tmp/mlxd-$UID/mlxd.sock``: where a daemon of user ``uid`` listens by default."""
    explicit = os.environ.get(SOCKET_ENV, "")
    if explicit:
        return explicit
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime_dir and os.path.isabs(runtime_dir):
        return os.path.join(runtime_dir, "mlxd", "mlxd.sock")
    return f"/tmp/mlxd-{uid}/mlxd.sock"


def _agent_socket_path() -> Optional[str]:
    """The per-user LaunchAgent's socket (macOS only)."""
    if not _MACOS:
        return None
    home = os.environ.get("HOME", "")
    if not home or not os.path.isabs(home):
        return None
    return os.path.join(home, "Library/Application Support/mlxd/mlxd.sock")


def _owner(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def choose_socket(
    candidates: Sequence[str], uid: int, owner: Callable[[str], Optional[int]] = _owner
) -> Tuple[str, List[Tuple[str, int]]]:
    """Among ``candidates`` (the per-user default first): the first that exists in a
    directory owned by ``uid`` or root, else the first whose directory is not someone
    else's, else the per-user default. Also returns the (path, directory owner) passed
    over because someone else owns their directory."""
    passed_over: List[Tuple[str, int]] = []
    usable: List[str] = []
    for candidate in candidates:
        directory_owner = owner(os.path.dirname(candidate))
        if directory_owner is not None and directory_owner not in (uid, 0):
            passed_over.append((candidate, directory_owner))
        else:
            usable.append(candidate)
    existing = [path for path in usable if owner(path) is not None]
    if existing:
        return existing[0], passed_over
    if usable:
        return usable[0], passed_over
    return candidates[0], passed_over


def resolve_socket(explicit: Optional[str] = None) -> str:
    """The socket to connect to: ``explicit``, ``$MLXD_SOCKET``, else the first default
    (per-user, LaunchAgent, system service) as the Rust client chooses it, warning on
    stderr about defaults passed over."""
    if explicit:
        return explicit
    uid = os.getuid()
    user = default_socket_path(uid)
    if os.environ.get(SOCKET_ENV, ""):
        return user
    candidates = [path for path in (user, _agent_socket_path(), SYSTEM_SOCKET_PATH) if path]
    path, passed_over = choose_socket(candidates, uid)
    for skipped, directory_owner in passed_over:
        _warn(
            f"passed over {skipped}: its directory belongs to uid {directory_owner}, not to you or root, "
            "so it is not used (set MLXD_SOCKET to use it anyway)"
        )
    return path


# -- Checking the server ---------------------------------------------------------------------


def trusted_uids_from_env() -> List[int]:
    """``$MLXD_TRUSTED_UIDS``; an entry that is not a uid is skipped with a warning."""
    uids: List[int] = []
    for entry in os.environ.get(TRUSTED_UIDS_ENV, "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            uids.append(int(entry))
        except ValueError:
            _warn(f"ignoring {entry!r} in {TRUSTED_UIDS_ENV}: not a uid")
    return uids


#: Linux's struct ucred { pid_t pid; uid_t uid; gid_t gid; }: the ids are unsigned.
_UCRED = struct.Struct("iII")


def ucred_uid(raw: bytes) -> int:
    """The uid in a struct ucred (``SO_PEERCRED``)."""
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process serving ``sock``, from the kernel."""
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None:  # Linux
        return ucred_uid(sock.getsockopt(socket.SOL_SOCKET, so_peercred, _UCRED.size))
    libc_name = ctypes.util.find_library("c")
    getpeereid = getattr(ctypes.CDLL(libc_name, use_errno=True), "getpeereid", None) if libc_name else None
    if getpeereid is None:
        raise OSError("cannot read the server's credentials on this platform (no SO_PEERCRED, no getpeereid)")
    uid_out, gid_out = ctypes.c_uint32(), ctypes.c_uint32()
    if getpeereid(sock.fileno(), ctypes.byref(uid_out), ctypes.byref(gid_out)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"getpeereid: {os.strerror(errno)}")
    return int(uid_out.value)


def check_server(path: str, sock: socket.socket, trusted_uids: Sequence[int]) -> None:
    """Refuses a socket served by anyone but this process's user, root, or a trusted uid,
    before anything is sent to it."""
    server_uid = peer_uid(sock)
    client_uid = os.geteuid()
    if server_uid in (client_uid, 0) or server_uid in trusted_uids:
        return
    raise UntrustedServerError(
        f"refusing to talk to {path}: it is served by uid {server_uid}, not by you (uid {client_uid}) or root; "
        f"if that is intended, add {server_uid} to {TRUSTED_UIDS_ENV}"
    )


def is_no_daemon(err: OSError) -> bool:
    """Nothing listens there (as opposed to a daemon we may not use)."""
    return isinstance(err, (FileNotFoundError, ConnectionRefusedError))


# -- The stdio fallback --------------------------------------------------------------------


def fallback_from_env() -> bool:
    """Whether the fallback is on when the caller does not say: on unless
    ``$MLXD_NO_FALLBACK`` is set to something other than "" or "0"."""
    return os.environ.get(NO_FALLBACK_ENV, "") in ("", "0")


def find_mlxd(explicit: Optional[str] = None) -> str:
    """The ``mlxd`` binary: ``explicit``, ``$MLXD_BIN``, ``mlxd`` on PATH."""
    if explicit:
        return explicit
    from_env = os.environ.get(BIN_ENV, "")
    if from_env:
        return from_env
    return shutil.which("mlxd") or "mlxd"


def fallback_command(binary: str) -> Tuple[List[str], dict[str, str]]:
    """The argv and environment of the private ``mlxd stdio``."""
    env = dict(os.environ)
    # The child shares our stderr: keep it to warnings unless asked.
    env.setdefault("MLXD_LOG", "warn")
    return [binary, "stdio"], env


def say_fallback(path: str, err: OSError) -> None:
    reason = err.strerror or str(err)
    _warn(
        f"no daemon at {path} ({reason}); fell back to a private `mlxd stdio` "
        "(models load for this process only; start `mlxd serve` to share them)"
    )


# -- Busy retries --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How ``Busy`` refusals of idempotent requests (embed, tokenize, detokenize, status,
    ping, models) are retried: after the daemon's ``retry_after`` (10 ms if it gave none),
    scaled by a random factor in [0.5, 1.5) so clients refused together do not come back
    together, capped at ``max_wait`` seconds, at most ``max_retries`` times. The same
    policy as the Rust client's."""

    max_retries: int = 3
    max_wait: float = 2.0

    def wait(self, retry_after: Optional[float]) -> float:
        """Seconds to wait before the next try."""
        suggested = max(retry_after if retry_after is not None else 0.010, 0.001)
        return min(jitter(suggested), self.max_wait)


#: No retries: every Busy reaches the caller.
NO_RETRIES = RetryPolicy(max_retries=0, max_wait=0.0)


def jitter(wait: float) -> float:
    """``wait`` scaled by a random factor in [0.5, 1.5)."""
    if wait <= 0:
        return 0.0
    return wait * (0.5 + random.random())


def client_name_default() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mlxd-python"
