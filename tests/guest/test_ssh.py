"""SSH transport: same results as serial, the stock OpenSSH client works, and the door is locked."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

pytestmark = pytest.mark.guest


def run_cli(out: Path, *args: str) -> tuple[int, str, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--out", str(out), *args],
        capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    result = json.loads((out / "result.json").read_text())
    return proc.returncode, proc.stdout + proc.stderr, result


def outcome(result: dict) -> list[tuple]:
    """What a run concluded, transport-independent: each step's status and its cma_test verdicts."""
    rows = []
    for step in result["steps"]:
        records = [
            re.sub(r" (id|phys|user|offset|pid|ret|addr|total|count|bytes)=\S+", "", line)
            for c in step["commands"]
            for line in c["stdout"].splitlines()
            if line.startswith("@cma ")
        ]
        rows.append((step["scenario"], step["name"], step["status"], tuple(records)))
    return rows


@pytest.mark.parametrize("target", ["arm64-virt", "armv7-virt"])
def test_the_whole_suite_gives_the_same_results_over_ssh_and_serial(tmp_path, target):
    suite = ["--target", target, "--scenario", "configs/scenarios"]
    code_s, out_s, serial = run_cli(tmp_path / "serial", *suite)
    code_h, out_h, ssh = run_cli(tmp_path / "ssh", "--transport", "ssh", *suite)
    assert code_s == 0, out_s
    assert code_h == 0, out_h
    assert len(ssh["scenarios"]) >= 8 and all(s["verdict"] == "pass" for s in ssh["scenarios"])
    assert outcome(ssh) == outcome(serial)
    assert ssh["kernel_events"] == []
    assert (serial["transport"], ssh["transport"]) == ("serial", "ssh")


def test_a_guest_that_stops_answering_while_ssh_comes_up_is_reported_in_bounded_time(tmp_path):
    # The guest freezes (its QEMU stopped) as soon as its shell is up, while the host is
    # still making the SSH handshake, which can then never finish. timeouts.ssh bounds the wait.
    text = Path("configs/targets/arm64-virt.yaml").read_text()
    target = tmp_path / "frozen.yaml"
    target.write_text(text.replace("timeouts:\n", "timeouts:\n  ssh: 8\n"))
    out = tmp_path / "run"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--out", str(out), "--transport", "ssh",
         "--target", str(target), "--scenario", "smoke"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    console, pidfile = out / "console.log", out / "qemu.pid"
    while not (console.exists() and "@@ready" in console.read_text(errors="replace")):
        assert proc.poll() is None and time.monotonic() - started < 120, "the guest never came up"
        time.sleep(0.01)
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGSTOP)
    output, _ = proc.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, output  # infrastructure: the guest, not the driver
    result = json.loads((out / "result.json").read_text())
    assert result["verdict"] == "error"
    assert re.search(r"SSH did not come up on 127\.0\.0\.1:\d+ in time \(timeouts\.ssh\)", result["error"])
    assert "@@boot sshd-hostkey" in result["console_tail"] or "sshd-hostkey" in result["error"]
    assert elapsed < 90, elapsed
    assert not _alive(pid)


def test_a_dropped_connection_is_reported_in_bounded_time(tmp_path):
    scenario = tmp_path / "drop.yaml"
    scenario.write_text(
        "name: drop\nsteps:\n  - insmod: {}\n  - shell: {run: 'killall dropbear', timeout: 10}\n"
        "  - alloc: {name: a, size: 4K}\n"
    )
    started = time.monotonic()
    code, output, result = run_cli(tmp_path / "run", "--transport", "ssh", "--scenario", str(scenario))
    assert code == 1, output
    assert time.monotonic() - started < 90
    problems = [p for s in result["steps"] for p in s["problems"]]
    assert any("guest stopped answering" in p and "SSH" in p for p in problems), problems
    assert result["console_tail"]
    assert not _alive(int((tmp_path / "run" / "qemu.pid").read_text()))


# --- one guest left running by `cma-harness boot`, probed from outside ---------------------------


# Tests sharing the one booted guest run in the same xdist worker (tox runs guest tests on 2).
BOOTED_GUEST = pytest.mark.xdist_group("ssh-booted-guest")


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    out = tmp_path_factory.mktemp("boot")
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "boot", "--transport", "ssh", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ssh: "):
            break
    else:
        raise AssertionError("boot printed no ssh line:\n" + "".join(lines))
    command = line.removeprefix("ssh: ").split()
    port = int(command[command.index("-p") + 1])
    yield {"proc": proc, "out": out, "ssh": command, "port": port}
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert "guest powered off" in rest
    assert not _alive(int((out / "qemu.pid").read_text()))


@BOOTED_GUEST
def test_the_stock_openssh_client_runs_a_command(booted):
    proc = subprocess.run(
        [*booted["ssh"], "-o", "BatchMode=yes", "cat /proc/sys/kernel/osrelease; ls /dev/cma_mem; cma_test total"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "/dev/cma_mem" in proc.stdout and "op=total status=ok" in proc.stdout


@BOOTED_GUEST
def test_the_forwarded_port_listens_on_loopback_only(booted):
    port = booted["port"]
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
    ]
    assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1 only
    assert not any(
        line.split()[1].endswith(f":{port:04X}") for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]
    )
    for address in _host_addresses():
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, port)) != 0, f"port {port} reachable on {address}"


@BOOTED_GUEST
def test_password_login_is_refused(booted):
    with socket.create_connection(("127.0.0.1", booted["port"]), timeout=10) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=30)
            with pytest.raises(paramiko.BadAuthenticationType) as refused:
                transport.auth_password("root", "")
            assert "password" not in refused.value.allowed_types
            assert "publickey" in refused.value.allowed_types
        finally:
            transport.close()


@BOOTED_GUEST
def test_a_changed_host_key_is_refused(booted, tmp_path):
    other = paramiko.Ed25519Key(data=base64.b64decode(_some_other_ed25519_key()))
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{booted['port']} ssh-ed25519 {other.get_base64()}\n")
    command = [f"UserKnownHostsFile={known}" if p.startswith("UserKnownHostsFile=") else p for p in booted["ssh"]]
    proc = subprocess.run([*command, "-o", "BatchMode=yes", "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr
    from harness.guest.transport.ssh import ClientKey, connect

    key = ClientKey(paramiko.ECDSAKey.from_private_key_file(str(booted["out"] / "ssh" / "id_ecdsa")), Path("-"))
    with pytest.raises(paramiko.BadHostKeyException):
        connect(booted["port"], other, key, time.monotonic() + 30)


def _some_other_ed25519_key() -> str:
    # A host key the guest does not have (generated once by ssh-keygen, public part only).
    return "AAAAC3NzaC1lZDI1NTE5AAAAIJLcTtkKbTEf2uRFURb3hamTKQf3X40HVPrDXIZ+7S2b"


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return [a for a in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", out) if not a.startswith("127.")]


def _alive(pid: int) -> bool:
    try:
        return (
            b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes()
            and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
    except FileNotFoundError:
        return False
