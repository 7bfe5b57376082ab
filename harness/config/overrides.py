"""Command-line overrides of a target: `--kernel-arg`, `--qemu-arg`, `--cma`, `--memory`, `--smp`, `--timeout`.

A target file stays the place for a machine; these are for trying something once
(`--cma 64M`) without writing a new file. `apply()` returns a new, equally frozen Target,
so everything downstream (QEMU's argv, the kernel command line, timeouts) sees the
effective values and nothing else needs to know overrides exist. `to_json()` is what
result.json records under `config.overrides`.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any

from harness.config.targets import Target
from harness.config.yamlconf import parse_size
from harness.errors import ConfigError

TIMEOUT_NAMES = ("boot", "command", "shutdown", "ssh")


@dataclass(frozen=True)
class Overrides:
    kernel_args: tuple[str, ...] = ()
    qemu_args: tuple[str, ...] = ()
    cma_mib: int | None = None
    memory_mib: int | None = None
    smp: int | None = None
    timeouts: tuple[tuple[str, float], ...] = ()  # (name, seconds)

    @property
    def empty(self) -> bool:
        return self == Overrides()

    def apply(self, target: Target) -> Target:
        if self.empty:
            return target
        qemu = dataclasses.replace(
            target.qemu,
            smp=self.smp or target.qemu.smp,
            memory_mib=self.memory_mib or target.qemu.memory_mib,
            extra_args=[*target.qemu.extra_args, *self.qemu_args],
        )
        kernel = dataclasses.replace(target.kernel, cmdline=[*target.kernel.cmdline, *self.kernel_args])
        timeouts = dataclasses.replace(target.timeouts, **dict(self.timeouts))
        cma = self.cma_mib if self.cma_mib is not None else target.cma_mib
        if cma >= qemu.memory_mib:
            raise ConfigError(
                f"target {target.name}: cma={cma}M does not fit in {qemu.memory_mib}M of guest memory",
                hint="lower --cma or raise --memory",
            )
        return dataclasses.replace(target, cma_mib=cma, qemu=qemu, kernel=kernel, timeouts=timeouts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kernel_args:
            out["kernel_args"] = list(self.kernel_args)
        if self.qemu_args:
            out["qemu_args"] = list(self.qemu_args)
        for key in ("cma_mib", "memory_mib", "smp"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.timeouts:
            out["timeouts"] = dict(self.timeouts)
        return out

    def to_argv(self) -> list[str]:
        """The same overrides as command-line options (for child processes of `-j`)."""
        argv = [f"--kernel-arg={a}" for a in self.kernel_args] + [f"--qemu-arg={a}" for a in self.qemu_args]
        if self.cma_mib is not None:
            argv.append(f"--cma={self.cma_mib}M")
        if self.memory_mib is not None:
            argv.append(f"--memory={self.memory_mib}M")
        if self.smp is not None:
            argv.append(f"--smp={self.smp}")
        argv += [f"--timeout={name}={seconds:g}" for name, seconds in self.timeouts]
        return argv


def _mib(option: str, text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise ConfigError(f"{option} {text!r}: expected {exc}") from None
    if size <= 0 or size % (1 << 20):
        raise ConfigError(f"{option} {text!r}: expected a whole number of MiB, e.g. 64M")
    return size >> 20


def parse_timeouts(values: list[str]) -> tuple[tuple[str, float], ...]:
    """`--timeout 120` (every guest command), `--timeout boot=300,command=90` (named ones)."""
    out: dict[str, float] = {}
    for value in values:
        for part in value.split(","):
            name, sep, seconds = part.strip().rpartition("=")
            name = name if sep else "command"
            if name not in TIMEOUT_NAMES:
                raise ConfigError(f"--timeout {value!r}: unknown timeout '{name}'; known: {', '.join(TIMEOUT_NAMES)}")
            try:
                number = float(seconds)
            except ValueError:
                number = -1.0
            if number <= 0:
                raise ConfigError(f"--timeout {value!r}: expected seconds > 0, e.g. --timeout {name}=120")
            out[name] = number
    return tuple(out.items())


def parse_overrides(
    kernel_args: list[str] | None = None,
    qemu_args: list[str] | None = None,
    cma: str | None = None,
    memory: str | None = None,
    smp: int | None = None,
    timeouts: list[str] | None = None,
) -> Overrides:
    """From the CLI's strings. Each --kernel-arg / --qemu-arg may hold several words (shell quoting)."""

    def words(option: str, values: list[str] | None) -> tuple[str, ...]:
        out: list[str] = []
        for value in values or []:
            try:
                out += shlex.split(value)
            except ValueError as exc:
                raise ConfigError(f"{option} {value!r}: {exc}") from None
        return tuple(out)

    if smp is not None and smp < 1:
        raise ConfigError(f"--smp {smp}: expected at least 1")
    return Overrides(
        kernel_args=words("--kernel-arg", kernel_args),
        qemu_args=words("--qemu-arg", qemu_args),
        cma_mib=_mib("--cma", cma) if cma else None,
        memory_mib=_mib("--memory", memory) if memory else None,
        smp=smp,
        timeouts=parse_timeouts(timeouts or []),
    )
