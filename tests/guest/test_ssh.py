"""SSH transport: same results as serial, the stock OpenSSH client works, and the door is locked."""

from __future__ import annotations

import base64
import json
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
SOME = ["--scenario", "smoke", "--scenario", "bad-input", "--scenario", "multi-process"]


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


def test_scenarios_give_the_same_results_over_ssh_and_serial(tmp_path):
    code_s, out_s, serial = run_cli(tmp_path / "serial", *SOME)
    code_h, out_h, ssh = run_cli(tmp_path / "ssh", "--transport", "ssh", *SOME)
    assert code_s == 0, out_s
    assert code_h == 0, out_h
    assert outcome(ssh) == outcome(serial)
    assert ssh["kernel_events"] == []


def test_the_whole_suite_passes_over_ssh(tmp_path):
    code, output, result = run_cli(tmp_path, "--transport", "ssh", "--scenario", "configs/scenarios")
    assert code == 0, output
    assert len(result["scenarios"]) >= 8 and all(s["verdict"] == "pass" for s in result["scenarios"])


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


def test_the_stock_openssh_client_runs_a_command(booted):
    proc = subprocess.run(
        [*booted["ssh"], "-o", "BatchMode=yes", "cat /proc/sys/kernel/osrelease; ls /dev/cma_mem; cma_test total"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "/dev/cma_mem" in proc.stdout and "op=total status=ok" in proc.stdout


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


def test_a_changed_host_key_is_refused(booted, tmp_path):
    other = paramiko.Ed25519Key(data=base64.b64decode(_some_other_ed25519_key()))
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{booted['port']} ssh-ed25519 {other.get_base64()}\n")
    command = [f"UserKnownHostsFile={known}" if p.startswith("UserKnownHostsFile=") else p for p in booted["ssh"]]
    proc = subprocess.run([*command, "-o", "BatchMode=yes", "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr
    from harness.transport.ssh import ClientKey, connect

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
