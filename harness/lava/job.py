"""The LAVA job definition of a compiled script, its artifacts, and a device dictionary for `device_type: qemu`.

The job boots the same kernel and initramfs as a local run (the initramfs's /init is the
harness's command loop, harness/guest/guestinit.py) and types the same framed commands
(`__h ID 'command'`) on the console, through a few shell helpers defined by the job's first
line. Each scenario is one `interactive` test block; each step is one LAVA test case:

    __lc ID 'command' CHECK[; __lp PROCESS]; __lw     every command of a step but the last
    [__lc ID 'command' CHECK; ]__ls CASE               the last one: prints '@@lava-step CASE pass|fail'

`__lc` runs the command with the framing of a local run, then checks its exit status (CHECK, see
script.guest_check); `__lp` keeps a served process's pid; `__lw` prints the prompt the dispatcher
waits for between commands; `__ls` prints the step's verdict the test case matches. No marker
appears literally in the commands (boards and QEMU's pty may echo what is typed).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.config.targets import Target
from harness.guest.guestinit import PRINT_BOOT_FACTS, READY_MARKER
from harness.guest.qemu import BootFiles
from harness.lava.script import GuestCommand, Script, ScriptStep

JOB_FORMAT = "2"  # in the job's declaration line; bumped when the typed protocol changes
WAIT_PROMPT = "@@lava-wait"
BYE = "@@lava-bye"
STEP_MARKER = "@@lava-step"
DECLARATION = ": cma-harness-lava"  # a no-op line naming what the job runs: import reads it from the log
# Console lines after which the guest may never answer again (the local run's fatal faults, harness/oracles/
# faults.py FATAL_KINDS). The dispatcher waits for a prompt until the whole test action times out, so each
# line of the job also watches for these and stops the test at once (locally: 5 s of grace after one).
FATAL = (
    "Kernel panic - not syncing|Internal error: Oops|Unable to handle kernel|kernel BUG at|"
    "blocked for more than [0-9]+ seconds|detected stalls on CPUs|soft lockup - CPU"
)
FATAL_FAILURE = {"message": f"({FATAL})", "exception": "TestError", "error": "kernel fault on the console"}
DEPLOY_SECONDS = 300  # a download from the farm's artifact server (not a guest timeout: not in the target)
MARGIN_SECONDS = 60  # dispatcher start-up, image copies and hashing, finalize

# Defined once in the guest shell, then used on every line (the /init's own __h does the framing).
HELPERS = (
    '__lx() { case "$1" in a) ;; n) [ "$__rc" -ne 0 ] || __lf=1 ;; '
    't) ! grep -q \'^[[:space:]]*not ok\' /tmp/.o || __lf=1 ;; *) [ "$__rc" -eq "$1" ] || __lf=1 ;; esac; }; '
    '__lc() { __h "$1" "$2"; __lx "$3"; }; '
    "__lp() { eval \"__pid_$1=\\$(sed -n 's/.* pid=\\([0-9]*\\).*/\\1/p' /tmp/.o)\"; }; "
    "__lw() { printf '@@%s-%s\\n' lava wait; }; "
    '__ls() { if [ -z "$__lf" ]; then set -- "$1" pass; else set -- "$1" fail; fi; __lf=; '
    'printf \'@@%s-step %s %s\\n\' lava "$1" "$2"; }; '
    # Replies proved by md5 (guestinit's __m): a log cannot be asked again, and LAVA echoes
    # typed lines into the console, which a counted reply's frame must not contain.
    "__m=1"
)


def guest_line(command: GuestCommand) -> str:
    line = f"__lc {command.id} {shlex.quote(command.text)} {command.check}"
    if command.saves_pid:
        line += f"; __lp {command.saves_pid.replace('-', '_')}"
    return line


def declaration(script: Script, kernel: dict[str, Any]) -> str:
    """The job's first line names the target, the scenarios and the kernel (read back on import)."""
    fields = {
        "format": JOB_FORMAT,
        "target": script.target.name,
        "scenarios": ",".join(s.scenario.name for s in script.scenarios),
        "release": kernel.get("release", ""),
        "package": kernel.get("package", ""),
        "version": kernel.get("version", ""),
    }
    return DECLARATION + " " + " ".join(f"{k}={v}" for k, v in fields.items() if v)


def parse_declaration(line: str) -> dict[str, str] | None:
    if not line.startswith(DECLARATION + " "):
        return None
    return dict(word.split("=", 1) for word in line[len(DECLARATION) + 1 :].split() if "=" in word)


def step_entries(step: ScriptStep) -> list[dict[str, Any]]:
    """One interactive script entry per guest command; the last is the named test case."""
    entries: list[dict[str, Any]] = [
        {"command": f"{guest_line(c)}; __lw", "failures": [FATAL_FAILURE]} for c in step.commands[:-1]
    ]
    last = f"{guest_line(step.commands[-1])}; " if step.commands else ""
    marker = f"{STEP_MARKER} {step.case}"
    entries.append(
        {
            "command": f"{last}__ls {step.case}",
            "name": step.case,
            "successes": [{"message": f"{marker} pass"}],
            "failures": [{"message": f"{marker} fail"}, FATAL_FAILURE],
            "wait_for_prompt": False,
        }
    )
    return entries


def block_name(scenario: str) -> str:
    """A scenario's interactive test block: its LAVA test definition is 'N_<this>'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", scenario)


def interactive_blocks(script: Script, kernel: dict[str, Any], power_off: bool = True) -> list[dict[str, Any]]:
    blocks = []
    for number, compiled in enumerate(script.scenarios):
        entries: list[dict[str, Any]] = []
        if number == 0:
            # The kernel log's boot facts, which a local run asks for only when needed: a log cannot be asked later.
            entries.append({"command": f"{HELPERS}; {declaration(script, kernel)}; {PRINT_BOOT_FACTS}; __lw"})
        if compiled.reset is not None:
            entries.append({"command": f"{guest_line(compiled.reset)}; __lw"})
        for step in compiled.steps:
            entries += step_entries(step)
        if number == len(script.scenarios) - 1:
            entries.append({"command": f"{guest_line(script.report)}; __lw"})
            if power_off:
                # As a local run ends: the guest powers off, QEMU exits, the dispatcher need not wait for it.
                entries.append(
                    {
                        "command": "printf '@@%s\\n' lava-bye; poweroff -f",
                        "successes": [{"message": BYE}],
                        "wait_for_prompt": False,
                    }
                )
        blocks.append({"name": block_name(compiled.scenario.name), "prompts": [WAIT_PROMPT], "script": entries})
    return blocks


def arch_of(target: Target) -> str:
    """LAVA's job context `arch` (its device-type templates list arm64 and arm)."""
    return "arm64" if target.kernel.make_arch == "arm64" else "arm"


@dataclass(frozen=True)
class Artifact:
    label: str  # kernel, ramdisk, dtb: the job's image keys
    path: Path  # the copy next to the job
    sha256: str


def export_artifacts(boot: BootFiles, dest: Path) -> list[Artifact]:
    """The kernel, the initramfs (driver, cma_test, /init) and the dtb, copied next to the job with their sha256."""
    out = []
    for label, source in (("kernel", boot.kernel), ("ramdisk", boot.initrd), ("dtb", boot.dtb)):
        if source is None:
            continue
        copy = dest / source.name
        if copy.resolve() != source.resolve():
            shutil.copyfile(source, copy)
        out.append(Artifact(label, copy, hashlib.sha256(copy.read_bytes()).hexdigest()))
    (dest / "SHA256SUMS").write_text("".join(f"{a.sha256}  {a.path.name}\n" for a in out))
    return out


def artifact_url(artifact: Artifact, base_url: str | None) -> str:
    if base_url:
        return f"{base_url.rstrip('/')}/{artifact.path.name}"
    return artifact.path.resolve().as_uri()


def timeouts(script: Script) -> dict[str, int]:
    """The job's timeouts from the target's: boot, one command (the longest), all commands, shutdown."""
    t = script.target.timeouts
    commands = script.commands
    longest = max(c.timeout for c in commands)
    # The helpers line and the verdict lines are shell built-ins: one command timeout covers them all.
    test = sum(c.timeout for c in commands) + t.command
    return {
        "boot": int(t.boot),
        "connection": int(longest),
        "test": int(test),
        "job": int(DEPLOY_SECONDS + t.boot + test + t.shutdown + MARGIN_SECONDS),
    }


def job_definition(
    script: Script,
    artifacts: list[Artifact],
    kernel: dict[str, Any],
    *,
    device_type: str = "qemu",
    base_url: str | None = None,
) -> dict[str, Any]:
    target = script.target
    urls = {a.label: {"url": artifact_url(a, base_url), "sha256sum": a.sha256} for a in artifacts}
    limits = timeouts(script)
    names = ",".join(s.scenario.name for s in script.scenarios)
    if device_type == "qemu":
        images: dict[str, Any] = {
            "kernel": urls["kernel"] | {"image_arg": f'-kernel {{kernel}} -append "{target.kernel_cmdline()}"'},
            "ramdisk": urls["ramdisk"] | {"image_arg": "-initrd {ramdisk}"},
        }
        if "dtb" in urls:
            images["dtb"] = urls["dtb"] | {"image_arg": "-dtb {dtb}"}
        deploy: dict[str, Any] = {"to": "tmpfs", "images": images}
        boot: dict[str, Any] = {"method": "qemu", "media": "tmpfs"}
    else:
        # A board: TFTP and U-Boot, booting the same initramfs (its /init is the command loop).
        # The kernel command line is the target's; the board's console is the device's own.
        deploy = {
            "to": "tftp",
            "kernel": urls["kernel"] | {"type": "image" if target.kernel.make_arch == "arm64" else "zimage"},
            "ramdisk": urls["ramdisk"] | {"compression": "none", "header": "u-boot"},
            "os": "oe",
        }
        if "dtb" in urls:
            deploy["dtb"] = urls["dtb"]
        boot = {"method": "u-boot", "commands": "ramdisk"}
    job: dict[str, Any] = {
        "job_name": f"cma-harness {names} on {target.name}",
        "device_type": device_type,
        "visibility": "public",
        "priority": "medium",
        "metadata": {
            "cma-harness.target": target.name,
            "cma-harness.scenarios": names,
            "cma-harness.kernel": kernel.get("release", ""),
        },
        "timeouts": {
            "job": {"seconds": limits["job"]},
            "action": {"seconds": limits["test"]},
            "connection": {"seconds": limits["connection"]},
        },
        "actions": [
            {"deploy": deploy | {"timeout": {"seconds": DEPLOY_SECONDS}}},
            {"boot": boot | {"timeout": {"seconds": limits["boot"]}, "prompts": [READY_MARKER]}},
            {
                "test": {
                    "timeout": {"seconds": limits["test"]},
                    "interactive": interactive_blocks(script, kernel, power_off=device_type == "qemu"),
                }
            },
        ],
    }
    if device_type == "qemu":
        job["context"] = {"arch": arch_of(target)}
    return job


def device_dictionary(target: Target) -> dict[str, Any]:
    """What lava-server would render from its qemu device-type template, for this target's QEMU.

    For `lava-run --device` without a server: the same machine, CPU, memory and console as a
    local run (harness/guest/qemu.py), no network."""
    q = target.qemu
    options = [
        f"-machine {q.machine}",
        f"-cpu {q.cpu}",
        f"-smp {q.smp}",
        f"-m {q.memory_mib}M",
        "-nodefaults",
        "-no-reboot",
        "-display none",
        "-chardev stdio,id=console,signal=off",
        "-serial chardev:console",
        "-nic none",
        *(shlex.quote(a) for a in q.extra_args),
    ]
    t = target.timeouts
    return {
        "device_type": "qemu",
        "available_architectures": ["arm64", "arm"],
        "constants": {
            "kernel-start-message": "Linux version [0-9]",
            "shutdown-message": "The system is going down for reboot NOW",
            "default-shell-prompt": "lava-test: # ",
            "posix": {
                "lava_test_sh_cmd": "/bin/sh",
                "lava_test_results_dir": "/lava-%s",
                "lava_test_shell_file": "~/.bashrc",
            },
            "failure_retry": 1,
            "boot_retry": 1,
            "spawn_maxread": 4092,
        },
        "commands": {},
        "actions": {
            "deploy": {"methods": {"tmpfs": None, "image": {"parameters": {"guest": {"size": 512}}}}},
            "boot": {
                "connections": {"serial": None},
                "methods": {
                    "qemu": {
                        "parameters": {
                            "command": q.binary,
                            "boot_options": {"console": target.console},
                            "options": options,
                        }
                    }
                },
            },
        },
        "timeouts": {
            "actions": {"power-off": {"seconds": int(t.shutdown)}},
            "connections": {},
        },
    }


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=1000, allow_unicode=True)
