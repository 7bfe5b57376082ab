"""Scenario files: a list of steps, validated (file, line, what was expected) before anything boots.

Each step kind's schema, shorthand and static check are in the registry (steps.py).

Schema (docs/scenarios.md has the full reference):

```yaml
name: smoke                         # default: the file name
description: one line
steps:
  - insmod: {params: "test_pattern=1"}
  - alloc: {name: mem1, size: 800*480*4, type: wc}     # process: main (default), expect: 0
  - alloc: {name: big, size: 1G, expect: EINVAL}        # expect an exact errno
  - verify: [mem1]                  # the driver's test pattern over the whole buffer
  - write: {name: mem1, seed: 7}    # write a pattern, read it back
  - check: {name: mem1, seed: 7}    # that pattern is still there
  - info: {name: mem1}              # CMEM_GET_PHYS
  - ioctl: {cmd: CMEM_ALLOCATE, name: "", len: 4096, flags: 1, expect: EINVAL}   # raw
  - mmap: {offset: "@mem1", len: 8192, expect: EINVAL}  # mmap the device fd
  - cma: {process: main, run: "fork free mem1 expect=EPERM"}   # any cma_test steps
  - spawn: other                    # another process (own open file)
  - free: {name: mem1, process: other, expect: ENOENT}
  - kill: other                     # SIGKILL: the driver must free its blocks
  - exit: main                      # clean exit
  - exhaust: {chunk: 4M}            # allocate until ENOMEM, free
  - fragment: {count: 8, size: 1M, large: 4M}  # alloc N, free every other, alloc large
  - repeat: {times: 1000, steps: [...]}
  - rmmod: {expect: busy}
  - capacity: baseline | check      # allocator-level leak check
  - shell: {run: "cat /proc/meminfo", expect_status: 0, timeout: 10}
  - ktap: {run: "/bin/some_test"}   # KTAP/TAP output: one result per test point
  - dmesg: {contains: "regex", absent: "regex"}   # over the kernel log so far
```

`backend: heap` (top level, or `cma-harness run --backend heap`) runs the allocating steps through
the kernel's CMA heap (/dev/dma_heap) instead of the driver; a step may set its own `backend`.
Steps only the driver has (info, ioctl, mmap, raw cma words, `rmmod: busy`) are then refused here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import paths
from harness.config.guestfiles import is_file_list, parse_files
from harness.config.yamlconf import (
    Field,
    LocatedDict,
    LocatedList,
    Schema,
    expect_mapping,
    is_str,
    load_file,
    one_of,
    validate,
)
from harness.errors import ConfigError
from harness.scenario.model import DRIVER, HEAP, Scenario, Step
from harness.scenario.steps import ALL_STEPS, REGISTRY, LiveModel, apply_backend, static_check


def _located(value: Any, source: str, line: int) -> LocatedDict:
    out = LocatedDict(value or {})
    out.source, out.line = source, line
    out.key_lines = getattr(value, "key_lines", {})
    return out


def parse_step(item: Any, source: str, line: int, backend: str = DRIVER) -> Step:
    if not isinstance(item, LocatedDict) or len(item) != 1:
        raise ConfigError(f"{source}:{line}: step: expected a mapping with one key, one of: {', '.join(ALL_STEPS)}")
    [(kind, value)] = item.items()
    if kind not in REGISTRY:
        raise ConfigError(f"{source}:{line}: unknown step '{kind}'; expected one of: {', '.join(ALL_STEPS)}")
    shorthand = REGISTRY[kind].shorthand
    if shorthand and not isinstance(value, (dict, type(None))):
        value = _located({shorthand: value}, source, line)
    if value is None:
        value = _located({}, source, line)
    mapping = expect_mapping(value, f"step '{kind}'", source, line)
    args = validate(mapping, REGISTRY[kind].schema, f"step '{kind}'")
    apply_backend(kind, args, backend, f"{source}:{line}")
    body: tuple[Step, ...] = ()
    if REGISTRY[kind].body:
        body = tuple(_parse_steps(args.pop("steps"), source, mapping.line_of("steps"), "repeat: steps", backend))
    return Step(kind, args, line, body)


def _parse_steps(raw: Any, source: str, line: int, what: str, backend: str = DRIVER) -> list[Step]:
    if not isinstance(raw, LocatedList) or not raw:
        raise ConfigError(f"{source}:{line}: {what}: expected a non-empty list of steps")
    return [parse_step(item, source, item_line, backend) for item_line, item in zip(raw.item_lines, raw, strict=True)]


SCENARIO_SCHEMA = Schema(
    [
        Field("name", is_str, default=""),
        Field("description", is_str, default=""),
        Field("backend", one_of(DRIVER, HEAP), default=DRIVER, doc="the allocator of steps that do not name one"),
        Field("steps", lambda v: v, required=True, doc="the list of steps"),
        Field("files", is_file_list, default=[], doc="files into the guest: 'SRC[:DEST]', {src, dest}, {kselftest}"),
    ]
)


def load_scenario(path: Path, backend: str | None = None) -> Scenario:
    """`backend` (the run's `--backend`) overrides the file's own default; the name then says so."""
    root = expect_mapping(load_file(path), "scenario", str(path), 1)
    top = validate(root, SCENARIO_SCHEMA, "scenario")
    default = backend or top["backend"]
    steps = _parse_steps(root["steps"], str(path), root.line_of("steps"), "scenario: key 'steps'", default)
    model = LiveModel()
    for step in steps:
        static_check(step, model, str(path))
    name = top["name"] or path.stem
    if backend is not None and backend != top["backend"]:
        name = f"{name}@{backend}"
    files = parse_files(top["files"], str(path), root.line_of("files"))
    return Scenario(name=name, path=path, description=top["description"], steps=steps, files=files)


def scenario_paths(folder: Path | None = None) -> list[Path]:
    return sorted((folder or paths.scenarios_dir()).glob("*.yaml"))


def resolve_scenarios(specs: list[str], backend: str | None = None) -> list[Scenario]:
    """Scenario names, YAML paths and folders (every *.yaml inside), in order; `backend`: see load_scenario."""
    out: list[Scenario] = []
    for spec in specs:
        candidate = Path(spec)
        if candidate.is_dir():
            found = scenario_paths(candidate)
            if not found:
                raise ConfigError(f"{candidate}: no *.yaml scenarios in this folder")
            out += [load_scenario(p, backend) for p in found]
        else:
            out.append(resolve_scenario(spec, backend))
    return out


def resolve_scenario(name_or_path: str, backend: str | None = None) -> Scenario:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise ConfigError(f"scenario file not found: {candidate}")
        return load_scenario(candidate, backend)
    path = paths.scenarios_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in scenario_paths()) or "none"
        raise ConfigError(f"unknown scenario '{name_or_path}'; known scenarios: {known}")
    return load_scenario(path, backend)
