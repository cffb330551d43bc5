"""Creating the plugin socket file with exactly the intended mode and group.

Kong's nginx workers must be able to connect (write permission on the socket file), and
nobody else. The default suits the official ``kong`` image and a sidecar sharing Kong's
prefix volume: mode ``0660`` and the group that owns the socket's directory (the image's
``kong`` group, or a Kubernetes volume's ``fsGroup``).

There is no moment at which the socket is wider than intended: it is bound inside a
private directory (mode 0700) created next to the final path, given its mode and group
there, then renamed into place. The rename also replaces a stale socket atomically; any
other kind of file at the path is left alone and is an error.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODE = 0o660


@dataclass(frozen=True)
class SocketFile:
    """``mode``: permission bits; ``group``: a gid, or None for the directory's group."""

    mode: int = DEFAULT_MODE
    group: int | None = None


def parse_mode(text: str) -> int:
    """An octal mode such as ``0660`` or ``660`` (permission bits only)."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"socket mode {text!r} is not an octal number such as 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"socket mode {text!r} has bits beyond 0777")
    return mode


def parse_group(text: str) -> int:
    """A group name or a numeric gid."""
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"socket group {text!r} does not exist") from None


def bind_socket_file(path: Path, settings: SocketFile) -> socket.socket:
    """A Unix stream socket bound at ``path`` with ``settings`` applied; not listening."""
    _check_replaceable(path)
    directory = path.parent
    group = directory.stat().st_gid if settings.group is None else settings.group
    private = Path(tempfile.mkdtemp(prefix=".sock-", dir=directory))  # mode 0700
    staged = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staged))
        _set_group(staged, group, explicit=settings.group is not None)
        os.chmod(staged, settings.mode)
        _check_replaceable(path)
        os.rename(staged, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        raise
    finally:
        with contextlib.suppress(OSError):
            private.rmdir()
    return sock


def _check_replaceable(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it")


def _set_group(staged: Path, group: int, *, explicit: bool) -> None:
    if staged.stat().st_gid == group:
        return
    try:
        os.chown(staged, -1, group)
    except PermissionError:
        if explicit:
            raise PermissionError(
                f"cannot give the socket group {group}: this process is not a member"
            ) from None
        # The directory's group is only a default (some images give the prefix group 0
        # for arbitrary user ids): keep ours; workers of the same user still connect.
        log.info(
            "socket keeps group %d: this process is not in the directory's group %d "
            "(pass --socket-group to choose)",
            staged.stat().st_gid,
            group,
        )
