"""What a run resolves to before boot: the files it puts into the guest and its effective configuration.

Used by the session (prepare, result.json's `config`) and by `--dry-run` (harness/run/plan.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.artifacts.debian import ImageCache
from harness.artifacts.extra_files import StagedFile, stage_files
from harness.config.guestfiles import FileSpec
from harness.config.overrides import Overrides
from harness.config.targets import Target
from harness.guest.qemu import BootFiles, qemu_command
from harness.scenario.model import Scenario


def requested_files(target: Target, scenarios: list[Scenario], added: list[FileSpec]) -> list[FileSpec]:
    """The target's `files:`, then each scenario's, then `--add`: a later entry for the same path must agree."""
    return [*target.files, *(f for s in scenarios for f in s.files), *added]


def stage(target: Target, specs: list[FileSpec], cache: ImageCache) -> list[StagedFile]:
    """Build the kselftests among them, check and stage everything (content-keyed, in the cache)."""
    if not specs:
        return []

    def build(spec: FileSpec) -> Path:
        from harness.artifacts.kselftest import build_kselftest  # lazy: only runs that ask for one

        return build_kselftest(spec, target, cache)

    return stage_files(specs, target, cache.root, build)


def effective_config(target: Target, boot: BootFiles | None, overrides: Overrides) -> dict[str, Any]:
    """The values the guest really gets, after overrides: what result.json records under `config`."""
    placeholder = BootFiles(Path("<kernel>"), Path("<initramfs>"))
    argv = qemu_command(target, boot or placeholder)
    return {
        "cma_mib": target.cma_mib,
        "memory_mib": target.qemu.memory_mib,
        "smp": target.qemu.smp,
        "machine": target.qemu.machine,
        "cpu": target.qemu.cpu,
        "kernel_cmdline": target.kernel_cmdline(),
        "qemu_argv": argv,
        "timeouts": {
            "boot": target.timeouts.boot,
            "command": target.timeouts.command,
            "shutdown": target.timeouts.shutdown,
            "ssh": target.timeouts.ssh,
        },
        "overrides": overrides.to_json(),
    }
