"""The plugin socket's mode and group: what Kong's workers (or a sidecar's) need, no more."""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from kong_cilium_identity.cli import main
from kong_cilium_identity.server.socket_file import (
    SocketFile,
    bind_socket_file,
    parse_group,
    parse_mode,
)
from tests.server.conftest import SOCKET, commands
from tests.server.test_process import wait_for

VOLUME_GID = 4242  # the prefix volume's group (Kubernetes fsGroup, or the image's kong group)
OTHER_GID = 4343
WORKER_UID = 4200  # an nginx worker, or a sidecar, running as another user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown and setuid")


@pytest.fixture
def volume(prefix: Path) -> Path:
    os.chown(prefix, 0, VOLUME_GID)
    os.chmod(prefix, 0o2770)  # setgid, as Kubernetes prepares an fsGroup volume
    return prefix


def connect_as(path: Path, uid: int, groups: list[int]) -> int:
    """Connect from a child running as ``uid`` with ``groups``: 0, or the errno."""
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.setgroups(groups)
            os.setgid(groups[0])
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(path))
        except OSError as error:
            code = error.errno or 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def serve(prefix: Path, *flags: str) -> subprocess.Popen[bytes]:
    _, start = commands("ours", "probe", prefix, *flags)
    proc = subprocess.Popen(start, stdin=subprocess.DEVNULL)
    assert wait_for((prefix / SOCKET).exists)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_default_is_0660_with_the_directorys_group(volume: Path) -> None:
    proc = serve(volume)
    try:
        info = (volume / SOCKET).lstat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == VOLUME_GID
        # a worker of another user in the volume's group connects; anyone else cannot
        assert connect_as(volume / SOCKET, WORKER_UID, [VOLUME_GID]) == 0
        assert connect_as(volume / SOCKET, WORKER_UID, [OTHER_GID, VOLUME_GID]) == 0
        assert connect_as(volume / SOCKET, WORKER_UID + 1, [OTHER_GID]) == errno.EACCES
        assert [p.name for p in volume.iterdir()] == [SOCKET]  # no staging left behind
    finally:
        stop(proc)


def test_mode_and_group_flags(volume: Path) -> None:
    os.chmod(volume, 0o0775)  # readable by others, so that only the socket's bits decide
    proc = serve(volume, "--socket-mode", "0600", "--socket-group", str(OTHER_GID))
    try:
        info = (volume / SOCKET).lstat()
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_gid == OTHER_GID
        assert connect_as(volume / SOCKET, WORKER_UID, [OTHER_GID]) == errno.EACCES
    finally:
        stop(proc)
    proc = serve(volume, "--socket-mode", "666")
    try:
        assert stat.S_IMODE((volume / SOCKET).lstat().st_mode) == 0o666
        assert connect_as(volume / SOCKET, WORKER_UID, [OTHER_GID]) == 0
    finally:
        stop(proc)


def test_a_directory_group_the_server_is_not_in_falls_back_to_its_own(volume: Path) -> None:
    """A server running as another user (not in the directory's group) keeps its own
    group instead of failing; an explicit --socket-group it is not in is an error."""
    os.chmod(volume, 0o1777)  # anyone may create files here; no setgid bit

    def bind_as_worker(settings: SocketFile) -> int:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                os.setgroups([OTHER_GID])
                os.setgid(OTHER_GID)
                os.setuid(WORKER_UID)
                bind_socket_file(volume / "w.sock", settings).close()
            except PermissionError:
                code = 13
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)

    assert bind_as_worker(SocketFile()) == 0
    info = (volume / "w.sock").lstat()
    assert (stat.S_IMODE(info.st_mode), info.st_gid, info.st_uid) == (0o660, OTHER_GID, WORKER_UID)
    (volume / "w.sock").unlink()
    assert bind_as_worker(SocketFile(group=VOLUME_GID)) == 13
    assert list(volume.iterdir()) == []


def test_a_stale_socket_is_replaced_and_anything_else_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a crashed server's socket file
    os.chmod(path, 0o777)
    fresh = bind_socket_file(path, SocketFile())
    try:
        fresh.listen(1)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o660
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # reaches the new socket
    finally:
        fresh.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        bind_socket_file(path, SocketFile())
    assert path.read_text() == "not a socket"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock"]


def test_umask_does_not_widen_the_socket(tmp_path: Path) -> None:
    """bind() creates the file with 0777 & ~umask: with umask 0 that is world-writable,
    but only inside the private staging directory; the final path gets the final mode."""
    old = os.umask(0)
    try:
        sock = bind_socket_file(tmp_path / "s.sock", SocketFile(0o600, OTHER_GID))
    finally:
        os.umask(old)
    try:
        info = (tmp_path / "s.sock").lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o600, OTHER_GID)
    finally:
        sock.close()


def test_parsing_mode_and_group() -> None:
    assert parse_mode("0660") == parse_mode("660") == 0o660
    assert parse_group("0") == 0 and parse_group("root") == 0
    for bad in ("rw-rw----", "1777", "0o660x"):
        with pytest.raises(ValueError, match="socket mode"):
            parse_mode(bad)
    with pytest.raises(ValueError, match="does not exist"):
        parse_group("no-such-group-here")


@pytest.mark.parametrize("flag", [["--socket-mode", "abc"], ["--socket-group", "no-such-grp"]])
def test_serve_refuses_bad_socket_flags(prefix: Path, flag: list[str]) -> None:
    assert main(["serve", "--kong-prefix", str(prefix), *flag]) == 2
    assert list(prefix.iterdir()) == []


def test_serve_reports_a_path_it_must_not_replace(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (prefix / "cilium-identity.socket").write_text("someone's file")
    assert main(["serve", "--kong-prefix", str(prefix), "--stdin-watch", "off"]) == 1
    assert "cannot serve:" in capsys.readouterr().err
    assert (prefix / "cilium-identity.socket").read_text() == "someone's file"
