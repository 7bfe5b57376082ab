"""LAVA export and import without a guest: the job writer, and the importer on real `lava-run` logs.

The fixtures in tests/fixtures/lava/ were captured from `lava-run` (Debian's lava-dispatcher
2023.01, offline) running the job `cma-harness lava-job --scenario smoke` wrote, with the
project's driver and with the `no-test-pattern` variant of tests/guest/broken.py, plus the local
run of the same scenario on the same kernel. Import re-compiles the scenario and refuses a log
whose typed commands differ, so re-capture them after a change to smoke's guest commands:
`cma-harness lava-job --out /tmp/j/job.yaml && cd /tmp/j && lava-run --device device.yaml
--job-id 1 --output-dir out job.yaml 2> lava.log; gzip -9 -c lava.log > …/smoke-arm64-virt.lava.log.gz`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from harness.config.targets import resolve_target
from harness.errors import ConfigError
from harness.frontends.cli import main
from harness.guest.qemu import BootFiles
from harness.lava import job as lavajob
from harness.lava.logfile import parse_log
from harness.lava.replay import import_log
from harness.lava.script import compile_script
from harness.report.compare import compare
from harness.run.result import RunResult
from harness.scenario.loader import load_scenario, resolve_scenarios

FIXTURES = Path(__file__).parent / "fixtures" / "lava"
CLEAN = FIXTURES / "smoke-arm64-virt.lava.log.gz"
BROKEN = FIXTURES / "smoke-no-test-pattern.lava.log.gz"
LOCAL = FIXTURES / "smoke-arm64-virt.local.result.json"
SMOKE = Path("configs/scenarios/smoke.yaml")


@pytest.fixture(scope="module")
def target():
    return resolve_target("arm64-virt")


@pytest.fixture
def artifacts(tmp_path):
    files = {}
    for name, data in (("Image", b"kernel"), ("initrd.cpio", b"initramfs")):
        files[name] = tmp_path / "src" / name
        files[name].parent.mkdir(exist_ok=True)
        files[name].write_bytes(data)
    dest = tmp_path / "job"
    dest.mkdir()
    return lavajob.export_artifacts(BootFiles(files["Image"], files["initrd.cpio"]), dest)


def test_artifacts_are_copied_next_to_the_job_with_their_sha256(artifacts, tmp_path):
    assert [a.label for a in artifacts] == ["kernel", "ramdisk"]
    for a in artifacts:
        assert a.path.parent == tmp_path / "job"
        assert a.sha256 == hashlib.sha256(a.path.read_bytes()).hexdigest()
    sums = (tmp_path / "job" / "SHA256SUMS").read_text()
    assert sums == "".join(f"{a.sha256}  {a.path.name}\n" for a in artifacts)


def test_each_step_is_one_test_case_and_timeouts_come_from_the_target(target, artifacts):
    scenario = load_scenario(SMOKE)
    script = compile_script(target, [scenario])
    job = lavajob.job_definition(script, artifacts, {"release": "6.1.0-50-arm64"})
    text = lavajob.dump(job)
    assert yaml.safe_load(text) == job  # plain YAML a server accepts
    deploy, boot, test = (next(iter(a.values())) for a in job["actions"])
    assert deploy["to"] == "tmpfs" and deploy["images"]["kernel"]["sha256sum"] == artifacts[0].sha256
    assert deploy["images"]["kernel"]["url"] == artifacts[0].path.resolve().as_uri()
    assert f'-append "{target.kernel_cmdline()}"' in deploy["images"]["kernel"]["image_arg"]
    assert boot["timeout"] == {"seconds": int(target.timeouts.boot)} and boot["prompts"] == ["@@ready"]
    assert job["timeouts"]["connection"] == {"seconds": int(target.timeouts.command) + 15}  # the capacity probe
    assert job["context"] == {"arch": "arm64"}
    [block] = test["interactive"]
    cases = [e["name"] for e in block["script"] if "name" in e]
    assert cases == [f"{i:02d}-" + re.sub(r"[^A-Za-z0-9]+", "-", s.describe()).strip("-")[:60].rstrip("-")
                     for i, s in enumerate(scenario.steps, start=1)]  # fmt: skip
    assert len(cases) == len(scenario.steps) == 20
    # No marker a pattern waits for appears literally in what is typed (boards and ptys echo).
    typed = " ".join(e["command"] for e in block["script"])
    for entry in block["script"]:
        for pattern in [p["message"] for p in entry.get("successes", []) + entry.get("failures", [])]:
            assert not re.search(pattern, typed), pattern
    assert not re.search(block["prompts"][0], typed)


def test_pids_become_guest_variables_and_rmmod_busy_expects_failure(target):
    script = compile_script(target, resolve_scenarios(["multi-process", "smoke"]))
    lines = [lavajob.guest_line(c) for c in script.commands]
    assert any(line.startswith("__lc ") and "kill -9 ${__pid_a}" in line for line in lines)
    assert any(line.endswith("'cma_test serve a' 0; __lp a") for line in lines)
    assert any(re.match(r"__lc \d+ 'rmmod cma_mem' n$", line) for line in lines)  # rmmod: {expect: busy}
    assert script.scenarios[1].reset is not None  # the second scenario starts like a local run's second
    assert not any(re.search(r"\b9876500\d\d\b", line) for line in lines)  # no stand-in pid leaks


def test_device_dictionary_is_the_targets_qemu(target):
    device = lavajob.device_dictionary(target)
    params = device["actions"]["boot"]["methods"]["qemu"]["parameters"]
    assert params["command"] == "qemu-system-aarch64"
    assert params["boot_options"]["console"] == "ttyAMA0"
    assert {"-machine virt", "-cpu cortex-a57", "-m 1024M", "-nic none", "-smp 1"} <= set(params["options"])


def test_a_board_device_type_gets_tftp_and_u_boot(target, artifacts):
    script = compile_script(target, [load_scenario(SMOKE)])
    job = lavajob.job_definition(script, artifacts, {}, device_type="bcm2711-rpi-4-b", base_url="https://h/a/")
    deploy, boot, test = (next(iter(a.values())) for a in job["actions"])
    assert deploy["to"] == "tftp" and deploy["kernel"]["url"] == "https://h/a/Image"
    assert boot["method"] == "u-boot" and "context" not in job
    assert "poweroff" not in test["interactive"][0]["script"][-1]["command"]  # the lab powers boards off


def test_the_log_parser_reads_console_typed_lines_and_results():
    log = parse_log(gzip.decompress(CLEAN.read_bytes()).decode())
    # LAVA logs what it has read when its prompt matches: "@@ready" may share a line with what
    # follows it (the echo of the first typed line), as in this capture.
    assert any(line.text.startswith("@@ready") for line in log.console)
    assert log.job_result["result"] == "pass"
    assert len(log.cases("smoke")) == 20 and set(log.cases("smoke").values()) == {"pass"}
    assert log.sent[0].text.startswith("__lx() ")
    # '"' comes back from the dispatcher's '\"'; framed lines are as the guest printed them.
    assert any(line.text.startswith("@1o|/sys/module/cma_mem/sections/") for line in log.console)


def test_a_clean_farm_run_imports_as_a_pass_equal_to_the_local_run(tmp_path):
    out = tmp_path / "farm"
    assert main(["import-lava", str(CLEAN), "--out", str(out)]) == 0
    farm = RunResult.load(out)
    assert farm.verdict == "pass" and farm.target == "arm64-virt" and farm.scenario == "smoke"
    assert farm.kernel["release"] == farm.kernel["booted_release"] == "6.1.0-50-arm64"
    assert farm.cma == {"size_mib": 128, "base": "0x76c00000"}
    assert len(farm.steps) == 20 and all(s.status == "pass" for s in farm.steps)
    # The host's oracles ran: every allocation matched its dump_mem record from the farm's console.
    assert farm.allocations and all(a["dmesg"] is not None for a in farm.allocations)
    assert all(s.duration > 0 for s in farm.steps)  # the farm's times, not the replay's
    assert "dump_mem:CMA name:mem1" in (out / "dmesg.txt").read_text()
    assert "@@ready" in (out / "console.log").read_text()
    local = json.loads(LOCAL.read_text())
    c = compare(local, json.loads((out / "result.json").read_text()))
    assert not c.regression
    assert [(s.index, s.name, s.status) for s in RunResult.from_json(local).steps] == [
        (s.index, s.name, s.status) for s in farm.steps
    ]
    base = tmp_path / "local"
    base.mkdir()
    shutil.copy(LOCAL, base / "result.json")
    assert main(["compare", str(base), str(out)]) == 0


def test_a_broken_driver_farm_run_names_the_failing_step(tmp_path):
    assert main(["import-lava", str(BROKEN), "--out", str(tmp_path)]) == 1
    farm = RunResult.load(tmp_path)
    failed = [s for s in farm.steps if s.status == "fail"]
    assert [s.index for s in failed] == [7, 13, 19]
    assert failed[0].name == "verify names=mem1,mem2,mem3,buf"
    assert any("op=verify status=fail" in p and "pattern mismatch" in p for p in failed[0].problems)


def test_a_log_that_stops_mid_step_fails_that_step_with_the_logs_ending(tmp_path):
    lines = gzip.decompress(CLEAN.read_bytes()).decode().splitlines()
    cut = next(i for i, line in enumerate(lines) if "@@6 B" in line)  # step 4's command never finished
    log = tmp_path / "cut.log"
    log.write_text("\n".join(lines[:cut]) + "\n")
    record = import_log(log, tmp_path / "run")
    assert record.verdict == "fail"
    step = record.steps[-1]
    assert (step.index, step.status) == (4, "fail")
    assert "the LAVA log has no output" in step.problems[0] and "without the job's result" in step.problems[0]


def test_a_corrupted_framed_output_is_a_problem_not_a_silent_pass(tmp_path):
    text = gzip.decompress(CLEAN.read_bytes()).decode()
    text = text.replace("name=mem1 id=", "name=memX id=", 1)
    log = tmp_path / "bad.log"
    log.write_text(text)
    record = import_log(log, tmp_path / "run")
    assert record.verdict == "fail"
    assert any("does not match the md5" in p for p in record.problems)


def test_a_log_from_another_scenario_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="Re-export the job"):
        import_log(CLEAN, tmp_path / "run", scenario_specs=["lifecycle"])
    assert main(["import-lava", str(CLEAN), "--out", str(tmp_path / "x"), "--scenario", "lifecycle"]) == 2


def test_not_a_lava_log_is_a_usage_error(tmp_path):
    bad = tmp_path / "x.log"
    bad.write_text("hello\n")
    assert main(["import-lava", str(bad), "--out", str(tmp_path / "run")]) == 2


def test_a_command_too_long_for_the_console_is_refused_with_its_line(target, tmp_path):
    scenario = tmp_path / "long.yaml"
    scenario.write_text(f"name: long\ndescription: d\nsteps:\n  - shell: {{run: 'echo {'x' * 4000}'}}\n")
    with pytest.raises(ConfigError, match=r"long.yaml:4: step 'shell.*does not fit a console line"):
        compile_script(target, [load_scenario(scenario)])


def test_the_servers_log_as_lavacli_fetches_it_imports_the_same(tmp_path):
    # `lavacli jobs logs --raw ID` prints each entry as a YAML flow mapping, every scalar double-quoted.
    entries = [yaml.safe_load(line) for line in gzip.decompress(CLEAN.read_bytes()).decode().splitlines()]
    raw = "".join(
        "- " + yaml.dump(e, default_flow_style=True, default_style='"', width=10**6)[:-1] + "\n" for e in entries
    )
    log = tmp_path / "server.log"
    log.write_text(raw)
    served = import_log(log, tmp_path / "served")
    local = import_log(CLEAN, tmp_path / "local")
    assert served.verdict == local.verdict == "pass"
    assert [s.to_json() for s in served.steps] == [s.to_json() for s in local.steps]
