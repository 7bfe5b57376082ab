"""`run --dry-run`: the resolved plan of a run, and nothing boots.

For each target: the kernel, the QEMU argv and kernel command line after overrides, the files
put into the guest, and every scenario's steps. Getting the exact kernel and initramfs means
preparing them (cached, as `cma-harness prepare` does: a warm cache takes milliseconds, a cold
one downloads and builds); QEMU is never started.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from harness.run import resolve
from harness.run.result import RunResult
from harness.run.session import RunOptions, Stages, prepare
from harness.scenario.model import Scenario, Step


def _steps(steps: list[Step] | tuple[Step, ...], depth: int = 0) -> list[dict[str, Any]]:
    out = []
    for index, step in enumerate(steps, start=1):
        item: dict[str, Any] = {"index": index, "line": step.line, "step": step.describe()}
        if step.body:
            item["steps"] = _steps(step.body, depth + 1)
        out.append(item)
    return out


def scenario_plan(scenario: Scenario) -> dict[str, Any]:
    return {
        "name": scenario.name,
        "path": str(scenario.path),
        "description": scenario.description,
        "files": [f.to_json() for f in scenario.files],
        "steps": _steps(scenario.steps),
    }


def target_plan(opts: RunOptions, log: Callable[[str], None]) -> dict[str, Any]:
    record = RunResult(target=opts.target.name)
    boot = prepare(opts, Stages(record, lambda name, event, seconds: None), record, log)
    config = {**resolve.effective_config(opts.target, boot, opts.overrides), **record.config}
    return {
        "target": opts.target.name,
        "target_file": str(opts.target.path),
        "kernel": record.kernel | {"image": str(boot.kernel), "dtb": str(boot.dtb) if boot.dtb else None},
        "initramfs": str(boot.initrd),
        "module": str(boot.module),
        "transport": str(opts.transport),
        "out": str(opts.out),
        **config,
        "scenarios": [scenario_plan(s) for s in opts.scenarios],
    }


def render(plan: dict[str, Any]) -> str:
    lines = [
        f"target {plan['target']} ({plan['target_file']})",
        f"  kernel     {plan['kernel'].get('release', '?')}  {plan['kernel'].get('package', '')}",
        f"             {plan['kernel']['image']}",
        f"  initramfs  {plan['initramfs']}",
        f"  cma {plan['cma_mib']} MiB, memory {plan['memory_mib']} MiB, smp {plan['smp']}, "
        f"timeouts " + ", ".join(f"{k} {v:g} s" for k, v in plan["timeouts"].items()),
        f"  cmdline    {plan['kernel_cmdline']}",
        f"  qemu       {shlex.join(plan['qemu_argv'])}",
    ]
    if plan["overrides"]:
        lines.append(f"  overrides  {plan['overrides']}")
    for f in plan["files"]:
        lines.append(
            f"  file       {f['dest']} ← {f['source']} ({f['size']} bytes, sha256 {f['sha256'][:12]}; {f['origin']})"
        )
    for sc in plan["scenarios"]:
        lines.append(f"  scenario {sc['name']} ({len(sc['steps'])} steps, {sc['path']})")

        def show(steps: list[dict[str, Any]], indent: str) -> None:
            for st in steps:
                lines.append(f"{indent}{st['index']:>3}  {st['step']}  [line {st['line']}]")
                show(st.get("steps", []), indent + "     ")

        show(sc["steps"], "    ")
    lines.append(f"  run dir    {plan['out']} (nothing booted: --dry-run)")
    return "\n".join(lines)
