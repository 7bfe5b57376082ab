"""`cma-harness lava-job` and `cma-harness import-lava`: what the CLI's two subcommands do."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import paths
from harness.config.targets import resolve_target
from harness.errors import EXIT_PASS, ConfigError
from harness.lava import job as lavajob
from harness.lava.replay import import_log
from harness.lava.script import compile_script
from harness.run.result import RunResult
from harness.run.session import RunOptions, Stages, prepare
from harness.scenario.loader import resolve_scenarios


def write_job(
    opts: RunOptions, job_file: Path, *, device_type: str = "qemu", base_url: str | None = None
) -> tuple[Path, list[lavajob.Artifact]]:
    """Build what a run needs (cached), compile the scenarios, write the job, its artifacts and SHA256SUMS
    next to it, and for device type qemu the device dictionary `lava-run --device` needs."""
    script = compile_script(opts.target, opts.scenarios)  # refuses what cannot be typed, before building
    record = RunResult(target=opts.target.name)
    boot = prepare(opts, Stages(record, lambda name, event, seconds: None), record, lambda msg: print(f"  {msg}"))
    job_file.parent.mkdir(parents=True, exist_ok=True)
    artifacts = lavajob.export_artifacts(boot, job_file.parent)
    job = lavajob.job_definition(script, artifacts, record.kernel, device_type=device_type, base_url=base_url)
    job_file.write_text(lavajob.dump(job))
    if device_type == "qemu":
        (job_file.parent / "device.yaml").write_text(lavajob.dump(lavajob.device_dictionary(opts.target)))
    return job_file, artifacts


def cmd_lava_job(args: argparse.Namespace) -> int:
    target = resolve_target(args.target)
    scenarios = resolve_scenarios(args.scenario or ["smoke"])
    kmod = Path(args.kmod).resolve() if args.kmod else paths.kmod_dir()
    if not (kmod / "Kbuild").exists() and not (kmod / "Makefile").exists():
        raise ConfigError(f"--kmod {kmod}: not a kernel module source folder (no Makefile or Kbuild)")
    names = "-".join(s.name for s in scenarios)
    job_file = Path(args.out) if args.out else Path.cwd() / f"lava-{target.name}-{names}" / "job.yaml"
    opts = RunOptions(
        target=target,
        scenarios=scenarios,
        kmod=kmod,
        out=job_file.parent,
        cache=paths.cache_dir(args.cache_dir),
        install=not args.no_install,
    )
    written, artifacts = write_job(opts, job_file.resolve(), device_type=args.device_type, base_url=args.artifact_url)
    for artifact in artifacts:
        print(f"{artifact.sha256}  {artifact.path}")
    if args.device_type == "qemu":
        print(f"device dictionary: {written.parent / 'device.yaml'}")
    print(f"job: {written}")
    return EXIT_PASS


def cmd_import_lava(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.report.terminal import print_summary

    log = Path(args.log)
    if not log.is_file():
        raise ConfigError(f"{log}: no such LAVA log")
    out = Path(args.out) if args.out else Path.cwd() / "runs" / f"lava-{log.stem}"
    target = resolve_target(args.target) if args.target else None
    record = import_log(log, out.resolve(), target=target, scenario_specs=args.scenario)
    print_summary(record, out, Console(stderr=True, highlight=False))
    print(out)
    return record.exit_code
