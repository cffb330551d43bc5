"""Process behaviour: signals, Kong's death, threads and memory per event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.conftest import script
from tests.kit.kong import KongHarness
from tests.kit.kong_load import KongLoad, LoadRequest
from tests.kit.msgpack_rpc import RpcClient
from tests.scenario import (
    CHECKOUT,
    CHECKOUT_APP_ENTRY,
    CHECKOUT_BINDING,
    CHECKOUT_IP,
    CREDENTIAL,
    PAYMENTS_ENTRY,
    PAYMENTS_IP,
)
from tests.server.conftest import SERVERS, SOCKET, MakeKong, commands


def proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return True


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def rpc_for(kong: KongHarness) -> RpcClient:
    return RpcClient(str(kong.socket_path), read_timeout=5.0, log=lambda level, msg: None)


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_removes_the_socket_and_exits_zero(prefix: Path, server: str) -> None:
    _, start = commands(server, "probe", prefix)
    proc = subprocess.Popen(
        start, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    socket_path = prefix / SOCKET
    try:
        assert wait_for(socket_path.exists)
        time.sleep(0.2)  # past start-up, into the serving loop
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    if server == "stock":
        assert code == -signal.SIGTERM and socket_path.exists()  # killed, socket left behind
        return
    assert code == 0 and not socket_path.exists()


def launched_by_a_parent_that_exits(start: list[str], stdin: str) -> int:
    """Start the server from a short-lived "Kong" that gives it ``stdin`` ("pipe": a pipe
    the parent holds, as ngx.pipe.spawn does; "devnull") and exits; the server's pid."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "stdin = subprocess.PIPE if sys.argv[1] == 'pipe' else subprocess.DEVNULL\n"
            "server = subprocess.Popen(sys.argv[2:], stdin=stdin)\n"
            "print(server.pid, flush=True)\n"
            "time.sleep(1.0)\n",
            stdin,
            *start,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    parent.wait(timeout=10)  # "Kong" exits without stopping its plugin server
    return server_pid


def test_exits_when_kong_is_gone(prefix: Path) -> None:
    """Under Kong's start_cmd the server's stdin is a pipe from the nginx worker: EOF on
    it means Kong is gone."""
    _, start = commands("ours", "probe", prefix)
    server_pid = launched_by_a_parent_that_exits(start, "pipe")
    try:
        assert wait_for(lambda: gone(server_pid))
        assert not (prefix / SOCKET).exists()
    finally:
        if not gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)


@pytest.mark.parametrize("watch", [[], ["--stdin-watch", "off"]], ids=["auto", "off"])
def test_outlives_the_process_that_launched_it(prefix: Path, watch: list[str]) -> None:
    """External process management (systemd, s6, supervisord, a sidecar): stdin is not
    a pipe (or the watch is off), and the launcher may exit; the server keeps serving
    until SIGTERM."""
    _, start = commands("ours", "probe", prefix, *watch)
    stdin = "pipe" if watch else "devnull"  # off: even a closed pipe is ignored
    server_pid = launched_by_a_parent_that_exits(start, stdin)
    try:
        assert wait_for((prefix / SOCKET).exists)
        time.sleep(1.0)  # well past the launcher's exit
        assert not gone(server_pid)
        status = RpcClient(str(prefix / SOCKET), read_timeout=5.0, log=lambda *_: None).call(
            "plugin.GetStatus"
        )
        assert status["Pid"] == server_pid
        os.kill(server_pid, signal.SIGTERM)
        assert wait_for(lambda: gone(server_pid))
        assert not (prefix / SOCKET).exists()
    finally:
        if not gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_stdin_closed_stops_the_server_with_exit_zero(prefix: Path) -> None:
    _, start = commands("ours", "probe", prefix)
    proc = subprocess.Popen(start, stdin=subprocess.PIPE)
    try:
        assert wait_for((prefix / SOCKET).exists)
        assert proc.stdin is not None
        proc.stdin.write(b"anything Kong might write is read and ignored\n")
        proc.stdin.flush()
        time.sleep(0.2)
        assert proc.poll() is None
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        assert not (prefix / SOCKET).exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_stopping_server_leaves_its_successors_socket_alone(prefix: Path) -> None:
    """Kong reload: the new worker 0 starts a server (which replaces the socket) while
    the old one is still stopping; the old one must not remove the new socket."""
    _, start = commands("ours", "probe", prefix)
    old = subprocess.Popen(start, stdin=subprocess.PIPE)
    new = None
    try:
        assert wait_for((prefix / SOCKET).exists)
        first = (prefix / SOCKET).lstat().st_ino
        new = subprocess.Popen(start, stdin=subprocess.PIPE)
        assert wait_for(lambda: (prefix / SOCKET).lstat().st_ino != first)
        assert old.stdin is not None
        old.stdin.close()  # the old nginx worker exits
        assert old.wait(timeout=10) == 0
        status = RpcClient(str(prefix / SOCKET), read_timeout=5.0, log=lambda *_: None).call(
            "plugin.GetStatus"
        )
        assert status["Pid"] == new.pid
    finally:
        for proc in (old, new):
            if proc is not None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("server", SERVERS)
def test_no_thread_per_event(make_kong: MakeKong, server: str) -> None:
    kong = make_kong(server)
    assert kong.server_pid is not None
    rpc = rpc_for(kong)
    config = json.dumps(script(["call", "kong.client.get_ip"]))
    instance_id = rpc.call("plugin.StartInstance", {"Name": "probe", "Config": config})["Id"]
    before = proc_status(kong.server_pid, "Threads")
    events = [
        rpc.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"})
        for _ in range(20)
    ]  # 20 events, each parked in its first PDK call
    during = proc_status(kong.server_pid, "Threads")
    for event in events:
        assert (
            rpc.call("plugin.Step", {"EventId": event["EventId"], "Data": "10.0.0.1"})["Data"]
            == "ret"
        )
    if server == "stock":
        assert during == before + 20
    else:
        assert during == before


def exits(rpc: RpcClient, first: int, after: int, pairs: int) -> None:
    for _ in range(pairs):
        rpc.call("plugin.HandleEvent", {"InstanceId": first, "EventName": "access"})
        parked = rpc.call("plugin.HandleEvent", {"InstanceId": after, "EventName": "access"})
        rpc.call("plugin.Step", {"EventId": parked["EventId"], "Data": "10.0.0.1"})


@pytest.mark.parametrize("server", [*SERVERS, "stock-gevent"])
def test_exits_leave_nothing_behind(make_kong: MakeKong, server: str) -> None:
    """kong-pdk keeps each event whose first PDK call is an exit (and, with gevent, a
    greenlet per exit); ours keeps nothing."""
    kong = make_kong(server)
    assert kong.server_pid is not None
    rpc = rpc_for(kong)

    def start(steps: list[list[Any]]) -> int:
        config = json.dumps(script(*steps))
        return int(rpc.call("plugin.StartInstance", {"Name": "probe", "Config": config})["Id"])

    first = start([["call", "kong.response.error", 403]])
    after = start([["call", "kong.client.get_ip"], ["call", "kong.response.exit", 403]])
    exits(rpc, first, after, 200)  # warm up
    before = proc_status(kong.server_pid, "VmRSS")
    exits(rpc, first, after, 1000)
    growth_kib = proc_status(kong.server_pid, "VmRSS") - before
    if server == "ours":
        assert rpc.call("plugin.GetStatus")["Events"] == 0
        assert growth_kib < 2048
    else:
        assert growth_kib > 4096  # about 4 KiB (threads) to 10 KiB (gevent) per exit


def test_memory_is_flat_across_mixed_allow_and_deny(make_kong: MakeKong) -> None:
    """The benchmark runs 1,000,000 events; CI runs fewer."""
    kong = make_kong("ours", "cilium-identity")
    assert kong.server_pid is not None
    conf = kong.add_plugin(
        {
            "sources": ["static"],
            "static": {
                "entries": [CHECKOUT_APP_ENTRY, PAYMENTS_ENTRY],
            },
            "bindings": [CHECKOUT_BINDING],
        }
    ).conf
    consumer, credential = CHECKOUT, CREDENTIAL

    def request(ip: str) -> LoadRequest:
        return LoadRequest(
            {
                "kong.client.get_consumer": consumer,
                "kong.client.get_credential": credential,
                "kong.client.get_ip": ip,
                "kong.request.get_headers": {"host": ["api.local"]},
            }
        )

    load = KongLoad(str(kong.socket_path), plugin_name="cilium-identity", conf=conf)
    rss: list[int] = []
    result = load.run(
        [request(CHECKOUT_IP), request(PAYMENTS_IP)],
        30_000,
        every=3_000,
        on_progress=lambda done: rss.append(proc_status(kong.server_pid or 0, "VmRSS")),
    )
    assert result.outcomes == {"proxied": 15_000, "error 403": 15_000}
    assert max(rss) <= rss[0] * 1.10, rss
    assert rpc_for(kong).call("plugin.GetStatus")["Events"] == 0


def test_blocking_plugin_code_under_load_moves_the_loop_and_cleans_up(
    make_kong: MakeKong,
) -> None:
    """Many events blocking in plugin code at once: the loop moves to fresh threads, Steps
    reach the threads holding their greenlets, and everything ends clean."""
    kong = make_kong("ours")
    steps = [["call", "kong.client.get_ip"], ["sleep", 0.2], ["call", "kong.client.get_ip"]]
    conf = kong.add_plugin(script(*steps)).conf
    load = KongLoad(str(kong.socket_path), plugin_name="probe", conf=conf, concurrency=16)
    result = load.run([LoadRequest({"kong.client.get_ip": "10.0.0.1"})], 32)
    assert result.outcomes == {"proxied": 32}
    rpc = rpc_for(kong)
    assert wait_for(lambda: rpc.call("plugin.GetStatus")["Threads"] == 1, timeout=20.0)
    assert rpc.call("plugin.GetStatus")["Events"] == 0
