"""Shrink a failing op sequence (ddmin) and write it as a scenario that reproduces it.

`shrink(ops, run)`: `run(ops) -> bool` replays a candidate (on a guest, or on a model of a
broken driver in tests) and says whether it still fails. ddmin removes chunks of the top-level
list, then of each fork's child steps, until no single op can go. Every candidate has its
`expect=` words recomputed by the caller's replay (they are predictions, not part of the
sequence), so `run` should re-plan them: `replan(ops, model)` does it from a fresh model.

`to_scenario_yaml(ops, model)` writes the shrunk sequence in the scenario language
(docs/scenarios.md): insmod, then one `shell:` step per guest command that runs the cma_test
steps in their server process and checks, with busybox awk, every field the model knows
exactly (status, errno, id, len, offset, totals, pattern mismatch position, ...); guest
actions become `kill:`, `exit:`, `rmmod:`, `insmod:` steps; a capacity check ends it.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import replace

import yaml

from harness.guest.shell import DEBUGFS_BLOCKS
from harness.model.driver import DriverModel
from harness.model.gen import with_expects
from harness.model.ops import Op, batches

Run = Callable[[list[Op]], bool]


def ddmin(items: list[Op], fails: Callable[[list[Op]], bool]) -> list[Op]:
    """Zeller's ddmin: a 1-minimal sublist that still fails (fails(items) must hold)."""
    n = 2
    while len(items) >= 2:
        chunk = max(len(items) // n, 1)
        parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
        reduced = False
        for i in range(len(parts)):
            complement = [op for j, p in enumerate(parts) if j != i for op in p]
            if complement and fails(complement):
                items, n, reduced = complement, max(n - 1, 2), True
                break
        if not reduced:
            for p in parts:
                if len(p) < len(items) and fails(p):
                    items, n, reduced = p, 2, True
                    break
        if not reduced:
            if n >= len(items):
                break
            n = min(n * 2, len(items))
    return items


def shrink(ops: list[Op], run: Run) -> list[Op]:
    """Smallest sequence (top level, then inside each fork) that still fails."""
    ops = ddmin(list(ops), run)
    for i, op in enumerate(ops):
        if op.kind != "fork" or not op.child:
            continue

        def fails_with(kids: list[Op], i: int = i, op: Op = op) -> bool:
            return run([*ops[:i], replace(op, child=tuple(kids)), *ops[i + 1 :]])

        kids = [] if fails_with([]) else ddmin(list(op.child), fails_with)
        ops[i] = replace(op, child=tuple(kids))
    return ops


def replan(ops: list[Op], model: DriverModel) -> list[Op]:
    """The same ops with expect= recomputed by the model from its state (model is changed)."""
    out: list[Op] = []
    for b in batches([op.without_expect() for op in ops]):
        if b.guest is not None:
            model.guest(b.guest)
            out.append(b.guest)
            continue
        model.begin_command()
        for op in b.ops:
            out.append(with_expects(op, model.apply(op)))
    return out


# Fields the model knows exactly and that do not depend on the boot (no addresses, no pids).
STABLE = ("status", "errno", "expect", "proc", "id", "len", "offset", "blocks", "cma_total", "used", "available",
          "bytes", "at", "want", "got", "ret", "cmd", "exit", "name", "seed")  # fmt: skip

_AWK = (
    '/^@cma /{s=""; for(i=2;i<=NF;i++) if($i ~ /^step=/) s=substr($i,6); '
    'if(s!="" && !(s in seen)){seen[s]=1; for(i=2;i<=NF;i++){ if($i ~ /^msg=/) break; have[s ":" $i]=1 }}} '
    'END{n=split(W,w," "); bad=0; for(i=1;i<=n;i++) if(!(w[i] in have)){print "model mismatch: step " w[i]; bad=1} '
    "exit bad}"
)


def to_scenario_yaml(ops: list[Op], model: DriverModel, name: str = "fuzz-repro", description: str = "") -> str:
    """A scenario replaying ops from a fresh module load, each command checked field by field."""
    steps: list[dict[str, object]] = [{"insmod": {}}]
    started: set[str] = set()
    for b in batches(ops):
        g = b.guest
        if g is not None:
            outcome = model.guest(g)
            if g.kind in ("exit", "kill"):
                if g.proc in started:
                    steps.append({g.kind: g.proc})
                    started.discard(g.proc)
            elif g.kind == "blocks":
                # The driver's block list, as `id name len flags maps` lines sorted by id.
                want = ";".join(model.debugfs_blocks())
                listing = (
                    "sed -E 's/^pid=[-0-9]+ name=(.*) id=([0-9]+) phys=0x[0-9a-f]+ len=([0-9]+) flags=([a-z]+) "
                    f"maps=([-0-9]+)$/\\2 \\1 \\3 \\4 \\5/' {DEBUGFS_BLOCKS} | sort -n | "
                    "tr '\\n' ';' | sed 's/;$//'"
                )
                check = f'got=$({listing}); echo "$got"; test "$got" = {shlex.quote(want)}'
                steps.append({"shell": {"run": check}})
            elif g.kind == "rmmod":
                steps.append({"rmmod": {"expect": "ok" if outcome.ok else "busy"}})
            else:
                steps.append({"insmod": {}})
            continue
        if b.proc not in started:
            steps.append({"spawn": b.proc})
            started.add(b.proc)
        preds = model.apply_batch(b.ops, None)
        want = " ".join(
            f"{p.step}:{k}={v}" for p in sorted(preds, key=lambda p: p.step) for k, v in p.fields.items() if k in STABLE
        )
        words = b.words()
        run = (
            f"cma_test ctl {b.proc} {words} > /tmp/fuzz.out; cat /tmp/fuzz.out; "
            f"awk -v W={shlex.quote(want)} {shlex.quote(_AWK)} /tmp/fuzz.out"
        )
        steps.append({"shell": {"run": run}})
    for proc in sorted(started):
        steps.append({"exit": proc})
    if model.loaded:
        steps.append({"rmmod": {}})
    doc = {
        "name": name,
        "description": description or f"fuzz reproduction: {len(ops)} operations, checked against the model",
        "steps": steps,
    }
    return yaml.safe_dump(doc, sort_keys=False, width=10_000)
