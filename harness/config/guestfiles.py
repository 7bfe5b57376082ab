"""Files a run puts into the guest: `files:` in a scenario or a target, `--add SRC[:DEST]` on the command line.

Each entry is one of:

```yaml
files:
  - build/my_test                          # a host file or folder, relative to this YAML file
  - build/my_test:/root/my_test            # SRC:DEST, DEST absolute
  - {src: data/pattern.bin, dest: /root/pattern.bin}
  - {kselftest: mincore/mincore_selftest}  # an upstream kselftest, cross-built from linux-source
```

A file lands in /usr/bin/NAME (on the guest's PATH) unless DEST says otherwise; a folder in
/opt/NAME. This module only parses; harness/artifacts/extra_files.py checks (static, the right
architecture) and stages the files, and builds kselftests.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config.yamlconf import Field as SchemaField
from harness.config.yamlconf import LocatedDict, LocatedList, Schema, is_str, validate
from harness.errors import ConfigError

# Paths the harness itself owns in the initramfs: a user file may not replace them.
RESERVED = ("init", "bin/busybox", "bin/sh", "bin/cma_test", "lib/modules/cma_mem.ko")
DEFAULT_KSELFTEST_SOURCE = "linux-source-6.1"


@dataclass(frozen=True)
class FileSpec:
    """One thing to put into the guest. Exactly one of `src` (a host path) and `kselftest` is set."""

    dest: str  # absolute path in the guest ("" for the default, decided once the source is known)
    origin: str  # where it was asked for: "path/to/scenario.yaml:12" or "--add"
    src: Path | None = None
    kselftest: str = ""  # "DIR/PROGRAM" under tools/testing/selftests
    source_package: str = DEFAULT_KSELFTEST_SOURCE

    def describe(self) -> str:
        what = f"kselftest {self.kselftest}" if self.kselftest else str(self.src)
        return f"{what} → {self.dest or '(default)'}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dest": self.dest, "origin": self.origin}
        if self.kselftest:
            out |= {"kselftest": self.kselftest, "source_package": self.source_package}
        else:
            out["src"] = str(self.src)
        return out


def _check_dest(dest: str, origin: str) -> str:
    if not dest:
        return ""
    if not dest.startswith("/"):
        raise ConfigError(f"{origin}: files: destination {dest!r} must be an absolute guest path, e.g. /usr/bin/x")
    norm = posixpath.normpath(dest)
    if norm.lstrip("/") in RESERVED or ".." in dest.split("/"):
        raise ConfigError(f"{origin}: files: destination {dest!r} is the harness's own; choose another path")
    return norm + ("/" if dest.endswith("/") and norm != "/" else "")


def parse_add(value: str, base: Path, origin: str) -> FileSpec:
    """`SRC` or `SRC:DEST` (DEST absolute); SRC relative to `base`."""
    src, sep, dest = value.rpartition(":")
    if not sep or not dest.startswith("/") or not src:
        src, dest = value, ""
    if not src:
        raise ConfigError(f"{origin}: files: empty source in {value!r}")
    path = (base / Path(src).expanduser()).resolve()
    if not path.exists():
        raise ConfigError(f"{origin}: files: {path} does not exist")
    return FileSpec(dest=_check_dest(dest, origin), origin=origin, src=path)


ENTRY_SCHEMA = Schema(
    [
        SchemaField("src", is_str, default="", doc="a host file or folder, relative to the YAML file"),
        SchemaField("kselftest", is_str, default="", doc="DIR/PROGRAM under tools/testing/selftests"),
        SchemaField("source", is_str, default=DEFAULT_KSELFTEST_SOURCE, doc="the Debian linux-source package"),
        SchemaField("dest", is_str, default="", doc="absolute path in the guest"),
    ]
)


def is_file_list(value: Any) -> Any:
    """The YAML value of `files:` (checked in detail by parse_files, which knows file and line)."""
    if not isinstance(value, list):
        raise ValueError("a list of files: 'SRC', 'SRC:DEST', {src, dest} or {kselftest, dest}")
    return value


def parse_files(raw: Any, source: str, line: int) -> tuple[FileSpec, ...]:
    """A `files:` list from a scenario or target file; paths are relative to that file."""
    if raw in (None, []):
        return ()
    base = Path(source).parent
    lines = raw.item_lines if isinstance(raw, LocatedList) else [line] * len(raw)
    out = []
    for item_line, item in zip(lines, raw, strict=True):
        origin = f"{source}:{item_line}"
        if isinstance(item, str):
            out.append(parse_add(item, base, origin))
            continue
        if not isinstance(item, LocatedDict):
            raise ConfigError(f"{origin}: files: expected 'SRC', 'SRC:DEST' or a mapping, got {item!r}")
        values = validate(item, ENTRY_SCHEMA, "files entry")
        if bool(values["src"]) == bool(values["kselftest"]):
            raise ConfigError(f"{origin}: files entry: give exactly one of 'src' and 'kselftest'")
        dest = _check_dest(values["dest"], origin)
        if values["src"]:
            spec = parse_add(values["src"], base, origin)
            out.append(FileSpec(dest=dest, origin=origin, src=spec.src))
        else:
            name = values["kselftest"].strip("/")
            if name.count("/") < 1 or ".." in name.split("/"):
                raise ConfigError(f"{origin}: files entry: kselftest {name!r}: expected DIR/PROGRAM, e.g. mincore/x")
            out.append(FileSpec(dest=dest, origin=origin, kselftest=name, source_package=values["source"]))
    return tuple(out)
