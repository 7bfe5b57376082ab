"""Scenario files: a list of steps, validated (file, line, what was expected) before anything boots.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import paths
from harness.config import abi
from harness.config.yamlconf import (
    Field,
    LocatedDict,
    LocatedList,
    Schema,
    expect_mapping,
    is_int,
    is_number,
    is_positive_int,
    is_str,
    load_file,
    one_of,
    parse_size,
    validate,
)
from harness.errors import ConfigError

MAIN = "main"


@dataclass(frozen=True)
class Step:
    kind: str
    args: dict[str, Any]
    line: int
    body: tuple[Step, ...] = ()  # repeat

    def describe(self) -> str:
        defaults = {"process": MAIN, "expect": "0", "ptr": "ok", "steps": None}
        shown = " ".join(
            f"{k}={_short(v)}"
            for k, v in self.args.items()
            if v not in (None, "", [], {}) and (k not in defaults or defaults[k] != v) and k != "steps"
        )
        return f"{self.kind} {shown}".strip()


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str
    steps: list[Step] = field(default_factory=list)


# --- value checks ---------------------------------------------------------


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


def _process(value: Any) -> str:
    if not isinstance(value, str) or not value.replace("-", "").replace("_", "").isalnum() or len(value) > 32:
        raise ValueError("a process name (letters, digits, - and _)")
    return value


def _errno(value: Any) -> str:
    if value in (0, "0", None):
        return "0"
    if isinstance(value, str) and value.isupper() and value.startswith("E") and value.isalnum():
        return value
    raise ValueError("an errno name like EINVAL (or 0 for success)")


def _raw_name(value: Any) -> str:
    # Raw ioctls may pass any name, including empty ("-") and overlong ones.
    if value in ("", None):
        return "-"
    if not isinstance(value, str) or " " in value or len(value) > 64:
        raise ValueError("a name without spaces, at most 64 characters ('' for empty)")
    return value


def _cmd(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and (value in abi.command_names() or value.startswith("0x")):
        return value
    raise ValueError("a CMEM_* command from the uapi header or a number: " + ", ".join(abi.command_names()))


def _mmap_offset(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.startswith("@"):
        name, _, extra = value[1:].partition("+")
        _block_name(name)
        if extra:
            parse_size(extra)
        return value
    raise ValueError("a byte offset, or '@NAME' / '@NAME+BYTES' for a block's own offset")


def _cma_steps(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "'" in value or ";" in value:
        raise ValueError("cma_test steps as one string (see userland/README.md)")
    return value.strip()


def _regex(value: Any) -> str:
    import re

    if not isinstance(value, str):
        raise ValueError("a regular expression")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"a valid regular expression ({exc})") from None
    return value


# --- step table -----------------------------------------------------------

PROCESS = Field("process", _process, default=MAIN, doc="the cma_test process that owns the blocks")
EXPECT = Field("expect", _errno, default="0", doc="errno the call must fail with (0: must succeed)")


def _schema(*fields: Field) -> Schema:
    return Schema(list(fields))


STEP_SCHEMAS: dict[str, Schema] = {
    "insmod": _schema(Field("params", is_str, default="")),
    "rmmod": _schema(Field("expect", one_of("ok", "busy"), default="ok")),
    "alloc": _schema(
        Field("name", _block_name, required=True),
        Field("size", parse_size, required=True, doc="bytes, e.g. 800*480*4 or 4M"),
        Field("type", one_of("wc", "coherent"), default="wc"),
        PROCESS,
        EXPECT,
    ),
    "free": _schema(Field("name", _block_name, required=True), PROCESS, EXPECT),
    "verify": _schema(Field("names", _names, required=True), PROCESS),
    "write": _schema(Field("name", _block_name, required=True), Field("seed", is_int, default=1), PROCESS),
    "check": _schema(Field("name", _block_name, required=True), Field("seed", is_int, default=1), PROCESS),
    "info": _schema(Field("name", _block_name, required=True), PROCESS, EXPECT),
    "ioctl": _schema(
        Field("cmd", _cmd, required=True),
        Field("name", _raw_name, default="-"),
        Field("len", parse_size, default=0),
        Field("flags", is_int, default=0),
        Field("ptr", one_of("ok", "bad", "ro"), default="ok"),
        PROCESS,
        EXPECT,
    ),
    "mmap": _schema(
        Field("offset", _mmap_offset, required=True), Field("len", parse_size, required=True), PROCESS, EXPECT
    ),
    "cma": _schema(Field("run", _cma_steps, required=True), PROCESS),
    "spawn": _schema(Field("process", _process, required=True)),
    "kill": _schema(Field("process", _process, required=True)),
    "exit": _schema(Field("process", _process, required=True)),
    "exhaust": _schema(Field("chunk", parse_size, required=True), PROCESS),
    "fragment": _schema(
        Field("count", is_positive_int, required=True),
        Field("size", parse_size, required=True),
        Field("large", parse_size, required=True),
        Field("type", one_of("wc", "coherent"), default="coherent"),
        PROCESS,
        EXPECT,
    ),
    "repeat": _schema(Field("times", is_positive_int, required=True), Field("steps", lambda v: v, required=True)),
    "capacity": _schema(Field("mode", one_of("baseline", "check"), required=True)),
    "shell": _schema(
        Field("run", is_str, required=True),
        Field("expect_status", is_int, default=0),
        Field("timeout", is_number, default=None, doc="seconds; default: the target's command timeout"),
    ),
    "ktap": _schema(Field("run", is_str, required=True), Field("timeout", is_number, default=None)),
    "dmesg": _schema(Field("contains", _regex, default=None), Field("absent", _regex, default=None)),
}

# Shorthand: `free: mem1`, `verify: [a, b]`, `exit: main`, `capacity: check`.
SHORTHAND: dict[str, str] = {
    "free": "name",
    "verify": "names",
    "spawn": "process",
    "kill": "process",
    "exit": "process",
    "capacity": "mode",
    "shell": "run",
    "ktap": "run",
}
ALL_STEPS = sorted(STEP_SCHEMAS)


def _located(value: Any, source: str, line: int) -> LocatedDict:
    out = LocatedDict(value or {})
    out.source, out.line = source, line
    out.key_lines = getattr(value, "key_lines", {})
    return out


def parse_step(item: Any, source: str, line: int) -> Step:
    if not isinstance(item, LocatedDict) or len(item) != 1:
        raise ConfigError(f"{source}:{line}: step: expected a mapping with one key, one of: {', '.join(ALL_STEPS)}")
    [(kind, value)] = item.items()
    if kind not in STEP_SCHEMAS:
        raise ConfigError(f"{source}:{line}: unknown step '{kind}'; expected one of: {', '.join(ALL_STEPS)}")
    if kind in SHORTHAND and not isinstance(value, (dict, type(None))):
        value = _located({SHORTHAND[kind]: value}, source, line)
    if value is None:
        value = _located({}, source, line)
    mapping = expect_mapping(value, f"step '{kind}'", source, line)
    args = validate(mapping, STEP_SCHEMAS[kind], f"step '{kind}'")
    body: tuple[Step, ...] = ()
    if kind == "repeat":
        body = tuple(_parse_steps(args.pop("steps"), source, mapping.line_of("steps"), "repeat: steps"))
    return Step(kind, args, line, body)


def _parse_steps(raw: Any, source: str, line: int, what: str) -> list[Step]:
    if not isinstance(raw, LocatedList) or not raw:
        raise ConfigError(f"{source}:{line}: {what}: expected a non-empty list of steps")
    return [parse_step(item, source, item_line) for item_line, item in zip(raw.item_lines, raw, strict=True)]


# --- static checks: names and processes ----------------------------------


@dataclass
class _Model:
    live: dict[str, set[str]] = field(default_factory=dict)  # process -> block names

    def need_block(self, step: Step, source: str, name: str, process: str) -> None:
        if name not in self.live.get(process, set()):
            raise ConfigError(
                f"{source}:{step.line}: step '{step.kind}': block '{name}' is not allocated "
                f"in process '{process}' at this point"
            )

    def need_process(self, step: Step, source: str, process: str) -> None:
        if process not in self.live:
            raise ConfigError(f"{source}:{step.line}: step '{step.kind}': process '{process}' is not running")


def _check_step(step: Step, model: _Model, source: str) -> None:
    a, kind = step.args, step.kind
    process = a.get("process", MAIN)
    succeeds = a.get("expect", "0") == "0"
    if kind == "repeat":
        for inner in step.body:
            _check_step(inner, model, source)
    elif kind in ("kill", "exit"):
        model.need_process(step, source, process)
        model.live.pop(process)
    elif kind in ("verify", "write", "check", "info", "free", "mmap"):
        names = a.get("names") or [a.get("name") or a["offset"][1:].partition("+")[0]]
        if kind == "mmap" and not a["offset"].startswith("@"):
            names = []
        if succeeds or kind in ("verify", "write", "check"):
            for name in names:
                model.need_block(step, source, name, process)
        if kind == "free" and succeeds:
            model.live[process].discard(a["name"])
    else:  # alloc, spawn, cma, exhaust, ioctl, fragment start the process if needed
        live = model.live.setdefault(process, set())
        if kind == "alloc" and succeeds:
            live.add(a["name"])
        if kind == "fragment":  # the odd-numbered blocks stay; frag.large only if it must succeed
            live.update(f"frag.{i}" for i in range(1, a["count"], 2))
            if succeeds:
                live.add("frag.large")


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
    steps = _parse_steps(root["steps"], str(path), root.line_of("steps"), "scenario: key 'steps'")
    model = _Model()
    for step in steps:
        _check_step(step, model, str(path))
    return Scenario(name=top["name"] or path.stem, path=path, description=top["description"], steps=steps)


def scenario_paths(folder: Path | None = None) -> list[Path]:
    return sorted((folder or paths.scenarios_dir()).glob("*.yaml"))


def resolve_scenarios(specs: list[str]) -> list[Scenario]:
    """Scenario names, YAML paths and folders (every *.yaml inside), in order."""
    out: list[Scenario] = []
    for spec in specs:
        candidate = Path(spec)
        if candidate.is_dir():
            found = scenario_paths(candidate)
            if not found:
                raise ConfigError(f"{candidate}: no *.yaml scenarios in this folder")
            out += [load_scenario(p) for p in found]
        else:
            out.append(resolve_scenario(spec))
    return out


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
