"""Did two runs differ in more than the driver? From result.json's `provenance` and `config`.

A regression report claims "the driver changed and this broke". That holds only if the kernel,
the QEMU, the toolchain, the guest's other files, the harness and the effective configuration
were the same. The driver's own traces (its source hash, cma_mem.ko, the initramfs that holds
it) are expected to differ and are listed separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DRIVER_FILES = ("/lib/modules/cma_mem.ko",)
# Effective configuration keys that change what is tested (paths inside the cache do not).
CONFIG_KEYS = ("cma_mib", "memory_mib", "smp", "machine", "cpu", "kernel_cmdline", "timeouts")


@dataclass
class ProvenanceDiff:
    driver: list[str] = field(default_factory=list)  # what differs that belongs to the driver
    other: list[str] = field(default_factory=list)  # everything else that differs
    missing: list[str] = field(default_factory=list)  # runs without provenance: cannot tell

    @property
    def more_than_driver(self) -> bool:
        return bool(self.other)

    def warning(self) -> str:
        if self.missing:
            return f"no provenance in {' and '.join(self.missing)}: cannot tell whether only the driver changed"
        if not self.other:
            return ""
        return "the runs differ in more than the driver: " + "; ".join(self.other)

    def to_json(self) -> dict[str, Any]:
        return {"driver": self.driver, "other": self.other, "missing": self.missing, "warning": self.warning()}


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def _differs(what: str, a: Any, b: Any, into: list[str]) -> None:
    if a != b:
        into.append(f"{what} {_short(a)} → {_short(b)}")


def diff(base: dict[str, Any], cand: dict[str, Any]) -> ProvenanceDiff:
    out = ProvenanceDiff()
    bp, cp = base.get("provenance") or {}, cand.get("provenance") or {}
    out.missing = [name for name, p in (("the base run", bp), ("the candidate run", cp)) if not p]
    if out.missing:
        return out
    _differs("driver source", bp.get("driver_source"), cp.get("driver_source"), out.driver)
    ba, ca = bp.get("artifacts", {}), cp.get("artifacts", {})
    _differs("cma_mem.ko", (ba.get("module") or {}).get("sha256"), (ca.get("module") or {}).get("sha256"), out.driver)
    for name in ("kernel", "dtb"):
        _differs(f"{name} sha256", (ba.get(name) or {}).get("sha256"), (ca.get(name) or {}).get("sha256"), out.other)
    bf, cf = bp.get("initramfs_files", {}), cp.get("initramfs_files", {})
    for path in sorted(set(bf) | set(cf)):
        if path in DRIVER_FILES:
            continue
        if path not in bf or path not in cf:
            out.other.append(f"guest file {path} only in the {'candidate' if path in cf else 'base'}")
        else:
            _differs(f"guest file {path}", bf[path], cf[path], out.other)
    pkgs = {(p["name"], p.get("arch", "")): p.get("version") for p in bp.get("packages", [])}
    for p in cp.get("packages", []):
        key = (p["name"], p.get("arch", ""))
        if key in pkgs:
            _differs(f"package {p['name']}", pkgs[key], p.get("version"), out.other)
    _differs("QEMU", (bp.get("qemu") or {}).get("version"), (cp.get("qemu") or {}).get("version"), out.other)
    bc, cc = bp.get("compilers", {}), cp.get("compilers", {})
    for name in sorted(set(bc) & set(cc)):
        _differs(name, bc[name], cc[name], out.other)
    bh, ch = bp.get("harness", {}), cp.get("harness", {})
    if bh.get("source") != ch.get("source"):
        commits = f" (commit {bh.get('commit', '?')[:12]} → {ch.get('commit', '?')[:12]})"
        out.other.append(f"harness code {bh.get('source')} → {ch.get('source')}{commits}")
    bhost, chost = bp.get("host", {}), cp.get("host", {})
    for fact in ("machine", "release", "cpus"):
        _differs(f"host {fact}", bhost.get(fact), chost.get(fact), out.other)
    bcfg, ccfg = base.get("config") or {}, cand.get("config") or {}
    for name in CONFIG_KEYS:
        if name in bcfg and name in ccfg:
            _differs(name.replace("_", " "), bcfg[name], ccfg[name], out.other)
    return out
