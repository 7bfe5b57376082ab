"""Commands over SSH (paramiko), safely: loopback-only forward, key auth only, pinned host key.

The serial console stays where the kernel speaks; a reader thread keeps
consuming it while SSH carries the commands. Each command ends by writing a
barrier line into the kernel log (/dev/kmsg) and `run` returns only once the
console has shown it, so kernel messages a command caused are attributed to
that command, as they are over serial.
"""

from __future__ import annotations

import base64
import logging
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import GuestError
from harness.guest.transport.base import CommandResult

BARRIER = "cma-harness: barrier"


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (QEMU binds it a moment later; a clash fails loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ClientKey:
    """A fresh key pair for one run: the private key file (for `ssh -i`) and the public line."""

    key: Any  # paramiko.PKey
    path: Path

    @classmethod
    def generate(cls, directory: Path) -> ClientKey:
        import paramiko

        key = paramiko.ECDSAKey.generate(bits=256)
        path = directory / "id_ecdsa"
        key.write_private_key_file(str(path))
        path.chmod(0o600)
        (directory / "id_ecdsa.pub").write_text(f"{key.get_name()} {key.get_base64()} cma-harness\n")
        return cls(key, path)

    @property
    def cmdline_arg(self) -> str:
        # Spaces are not allowed in a kernel parameter: TYPE:BASE64, the guest turns ':' back into ' '.
        return f"cma_harness.sshkey={self.key.get_name()}:{self.key.get_base64()}"


def pinned_host_key(line: str) -> Any:
    """The paramiko key for 'ssh-ed25519 AAAA...' as the guest printed it on its console."""
    import paramiko

    kind, _, data = line.strip().partition(" ")
    if kind != "ssh-ed25519" or not data:
        raise GuestError(f"guest printed no usable SSH host key: {line!r}")
    return paramiko.Ed25519Key(data=base64.b64decode(data.split()[0]))


def write_known_hosts(path: Path, port: int, host_key: Any) -> None:
    path.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")


def connect(port: int, host_key: Any, client_key: ClientKey, deadline: float) -> Any:
    """A paramiko client, retried until the deadline while dropbear starts. Rejects any other host key."""
    import paramiko

    # paramiko's transport thread logs every failed handshake with a traceback; with no handler
    # configured, logging's last resort prints them on stderr. The error we raise says it once.
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    last: Exception | None = None
    while time.monotonic() < deadline:
        wait = min(5.0, max(0.5, deadline - time.monotonic()))  # the last try ends near the deadline
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.get_name(), host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())  # never trust an unknown key
        try:
            client.connect(
                "127.0.0.1",
                port=port,
                username="root",
                pkey=client_key.key,
                allow_agent=False,
                look_for_keys=False,
                timeout=wait,
                banner_timeout=wait,
                auth_timeout=wait,
            )
            return client
        except paramiko.BadHostKeyException:
            raise  # a changed host key is an attack or a mix-up, never a retry
        except (OSError, paramiko.SSHException) as exc:
            last = exc
            client.close()
            time.sleep(0.02)
    raise GuestError(f"SSH did not come up on 127.0.0.1:{port} in time (timeouts.ssh): {last}")


class SshTransport:
    name = "ssh"

    def __init__(
        self,
        client: Any,
        wait_kernel_line: Callable[[str, float], bool],
        on_dead: Callable[[], str],
        default_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.wait_kernel_line = wait_kernel_line  # (text, timeout) -> seen?
        self.on_dead = on_dead  # the console tail, for error reports
        self.default_timeout = default_timeout
        self._next_id = 1

    def fits(self, command: str, *, bulky: bool = False) -> bool:
        return True

    def run(self, command: str, timeout: float | None = None, *, bulky: bool = False) -> CommandResult:
        timeout = timeout or self.default_timeout
        cid = self._next_id
        self._next_id += 1
        marker = f"{BARRIER} {cid}"
        wrapped = f"( {command}\n) </dev/null; rc=$?; echo {shlex.quote(marker)} > /dev/kmsg; exit $rc"
        started = time.monotonic()
        stdout, stderr, status = self._exec(wrapped, timeout, command)
        if not self.wait_kernel_line(marker, max(1.0, started + timeout - time.monotonic())):
            raise GuestError(f"kernel log barrier after '{command}' never reached the console", detail=self.on_dead())
        return CommandResult(command, status, stdout, stderr, started, time.monotonic() - started)

    def _exec(self, command: str, timeout: float, shown: str, stdin: bytes = b"") -> tuple[str, str, int]:
        try:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise GuestError("the SSH connection dropped", detail=self.on_dead())
            chan = transport.open_session(timeout=timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while not (chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready()):
                if time.monotonic() > deadline:
                    chan.close()
                    raise GuestError(f"guest command timed out after {timeout:.0f} s: {shown}", detail=self.on_dead())
                got = False
                if chan.recv_ready():
                    out += chan.recv(65536)
                    got = True
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    got = True
                if not got:
                    chan.status_event.wait(0.005)
            status = chan.recv_exit_status()
            chan.close()
        except GuestError:
            raise
        except (OSError, EOFError) as exc:
            raise GuestError(f"SSH failed during '{shown}': {exc}", detail=self.on_dead()) from None
        except Exception as exc:  # paramiko.SSHException and friends
            raise GuestError(f"SSH failed during '{shown}': {exc}", detail=self.on_dead()) from None
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), status

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file in the guest (stdin of `cat`: dropbear has no SFTP server)."""
        q = shlex.quote(path)
        _, err, status = self._exec(f"cat > {q} && chmod {mode:o} {q}", self.default_timeout, f"put {path}", data)
        if status != 0:
            raise GuestError(f"cannot write {path} in the guest: {err.strip()}")

    def close(self) -> None:
        self.client.close()
