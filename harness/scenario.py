"""Scenario files: a list of steps, validated (file, line, what was expected) before anything boots.

```yaml
name: smoke
description: what it shows
steps:
  - insmod: {}                      # or {params: "test_pattern=1"}
  - capacity: baseline              # largest total the driver can allocate
  - alloc: {name: mem1, size: 800*480*4, type: wc}
  - verify: [mem1]                  # the driver's test pattern, whole buffer
  - write: {name: mem1, seed: 7}    # write a pattern and read it back
  - check: {name: mem1, seed: 7}    # that pattern is still there
  - free: mem1
  - rmmod: {expect: busy}           # refused while blocks are mapped
  - exit: main                      # the process ends; its blocks are freed
  - rmmod: {}
  - capacity: check                 # same total as the baseline
  - shell: {run: "cat /proc/meminfo", expect_status: 0}
```
Blocks belong to a process (default `main`, started on first use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import abi, paths
from harness.errors import ConfigError
from harness.yamlconf import (
    Field,
    LocatedDict,
    LocatedList,
    Schema,
    expect_mapping,
    is_int,
    is_number,
    is_str,
    load_file,
    one_of,
    parse_size,
    validate,
)


@dataclass(frozen=True)
class Step:
    kind: str
    args: dict[str, Any]
    line: int

    def describe(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.args.items() if v not in (None, "", [], {}))
        return f"{self.kind} {shown}".strip()


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    steps: list[Step] = field(default_factory=list)


def _block_name(value: Any) -> str:
    name_max = abi.name_len() - 1  # the NUL takes one byte
    if not isinstance(value, str) or not value or len(value.encode()) > name_max or " " in value:
        raise ValueError(f"a block name of 1..{name_max} characters without spaces")
    return value


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("a block name or a list of block names")
    return [_block_name(v) for v in value]


STEP_SCHEMAS: dict[str, Schema] = {
    "insmod": Schema([Field("params", is_str, default="")]),
    "rmmod": Schema([Field("expect", one_of("ok", "busy"), default="ok")]),
    "alloc": Schema(
        [
            Field("name", _block_name, required=True),
            Field("size", parse_size, required=True, doc="bytes, e.g. 800*480*4 or 4M"),
            Field("type", one_of("wc", "coherent"), default="wc"),
            Field("process", is_str, default="main"),
        ]
    ),
    "write": Schema(
        [
            Field("name", _block_name, required=True),
            Field("seed", is_int, default=1),
            Field("process", is_str, default="main"),
        ]
    ),
    "check": Schema(
        [
            Field("name", _block_name, required=True),
            Field("seed", is_int, default=1),
            Field("process", is_str, default="main"),
        ]
    ),
    "shell": Schema(
        [
            Field("run", is_str, required=True),
            Field("expect_status", is_int, default=0),
            Field("timeout", is_number, default=None, doc="seconds; default: the target's command timeout"),
        ]
    ),
}
# Steps whose value is a scalar or list rather than a mapping.
SCALAR_STEPS = {
    "free": ("names", _names),
    "verify": ("names", _names),
    "exit": ("process", is_str),
    "capacity": ("mode", one_of("baseline", "check")),
}
ALL_STEPS = sorted([*STEP_SCHEMAS, *SCALAR_STEPS])


def parse_step(item: Any, source: str, line: int) -> Step:
    if not isinstance(item, LocatedDict) or len(item) != 1:
        raise ConfigError(f"{source}:{line}: step: expected a mapping with one key, one of: {', '.join(ALL_STEPS)}")
    [(kind, value)] = item.items()
    if kind in SCALAR_STEPS:
        arg, check = SCALAR_STEPS[kind]
        try:
            return Step(kind, {arg: check(value)}, line)
        except ValueError as exc:
            raise ConfigError(f"{source}:{line}: step '{kind}': expected {exc}, got {value!r}") from None
    if kind not in STEP_SCHEMAS:
        raise ConfigError(f"{source}:{line}: unknown step '{kind}'; expected one of: {', '.join(ALL_STEPS)}")
    if value is None:
        value = LocatedDict()
        value.source, value.line, value.key_lines = source, line, {}
    mapping = expect_mapping(value, f"step '{kind}'", source, line)
    return Step(kind, validate(mapping, STEP_SCHEMAS[kind], f"step '{kind}'"), line)


def _check_names(steps: list[Step], source: str) -> None:
    """Every block a step names was allocated earlier (and not yet freed) in the same process."""
    live: dict[str, set[str]] = {}
    for step in steps:
        proc = step.args.get("process", "main")
        if step.kind == "alloc":
            live.setdefault(proc, set()).add(step.args["name"])
        elif step.kind in ("free", "verify", "write", "check"):
            names = step.args.get("names") or [step.args["name"]]
            for name in names:
                if name not in live.get(proc, set()):
                    raise ConfigError(
                        f"{source}:{step.line}: step '{step.kind}': block '{name}' is not allocated "
                        f"in process '{proc}' at this point"
                    )
            if step.kind == "free":
                live[proc] -= set(names)
        elif step.kind == "exit":
            if step.args["process"] not in live:
                raise ConfigError(f"{source}:{step.line}: step 'exit': process '{step.args['process']}' was never used")
            live.pop(step.args["process"])


SCENARIO_SCHEMA = Schema(
    [
        Field("name", is_str, default=""),
        Field("description", is_str, default=""),
        Field("steps", lambda v: v, required=True, doc="the list of steps"),
    ]
)


def load_scenario(path: Path) -> Scenario:
    root = expect_mapping(load_file(path), "scenario", str(path), 1)
    top = validate(root, SCENARIO_SCHEMA, "scenario")
    raw_steps = root["steps"]
    if not isinstance(raw_steps, LocatedList) or not raw_steps:
        raise ConfigError(f"{path}:{root.line_of('steps')}: scenario: key 'steps': expected a non-empty list")
    steps = [parse_step(item, str(path), line) for line, item in zip(raw_steps.item_lines, raw_steps, strict=True)]
    _check_names(steps, str(path))
    return Scenario(name=top["name"] or path.stem, path=path, description=top["description"], steps=steps)


def scenario_paths() -> list[Path]:
    return sorted(paths.scenarios_dir().glob("*.yaml"))


def resolve_scenario(name_or_path: str) -> Scenario:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise ConfigError(f"scenario file not found: {candidate}")
        return load_scenario(candidate)
    path = paths.scenarios_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in scenario_paths()) or "none"
        raise ConfigError(f"unknown scenario '{name_or_path}'; known scenarios: {known}")
    return load_scenario(path)
