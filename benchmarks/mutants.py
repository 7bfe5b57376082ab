"""Driver mutants, generated automatically, and the harness's mutation score.

    python benchmarks/mutants.py --list                       every mutant of kmod/cma_mem.c
    python benchmarks/mutants.py --sample 15 --seed 1 --list  a fixed sample
    python benchmarks/mutants.py --sample 15 --seed 1 --run [--target arm64-fast] [--fuzz-ops N]
    python benchmarks/mutants.py --run -j 2 --fuzz-ops 3000 --then-target arm64-debug --then-k smoke \\
        --resume --report docs/mutation-score.md          the whole set, resumable, with the report
    python benchmarks/mutants.py --show ID                    one mutant's diff

Each mutant is one change at one place of the driver, by a standard operator:
  rel       relational operator swap (<  <=  >  >=  ==  !=)
  arith     arithmetic swap (+ -, += -=, ++ --, * /)
  logic     && <-> ||
  bound     an integer literal +1 / -1
  guard     a guard's condition forced false (if (c) return ...; the return never happens)
  call      a call statement removed (unlock, free, list_del, put, ...)
  swap      the first two arguments of a call swapped
  const     a constant changed (true/false, one errno for another, WC/COHERENT)
Comments, strings, character literals and preprocessor lines are never touched, nor the
ABI self-check (cma_mem_check_abi) nor the module metadata. Ids are "L<line>C<col>-<op>[-k]":
stable for a given source.

--run builds each mutant through `cma-harness run --kmod DIR --target T --scenario
configs/scenarios` (exit 1: killed, 0: survived, 2/3: build or infrastructure failure,
counted apart), and with --fuzz-ops also runs the model-checked fuzzer on survivors
(cma-harness fuzz --kmod DIR --ops N). It prints killed/total and the survivors.
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "kmod" / "cma_mem.c"

_TOKEN = re.compile(
    r"""
    (?P<comment>/\*.*?\*/|//[^\n]*)
  | (?P<string>"(?:\\.|[^"\\\n])*")
  | (?P<char>'(?:\\.|[^'\\\n])+')
  | (?P<number>0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<op>\+\+|--|\+=|-=|<<=|>>=|<<|>>|<=|>=|==|!=|&&|\|\||->|[-+*/%<>!=&|^~?:;,(){}\[\].])
  | (?P<ws>\s+)
  | (?P<other>.)
    """,
    re.S | re.X,
)

REL = {"<": ["<=", ">="], "<=": ["<", ">"], ">": [">=", "<="], ">=": [">", "<"], "==": ["!="], "!=": ["=="]}
ARITH = {"+": ["-"], "-": ["+"], "+=": ["-="], "-=": ["+="], "++": ["--"], "--": ["++"], "*": ["/"]}
LOGIC = {"&&": ["||"], "||": ["&&"]}
ERRNOS = ["EINVAL", "ENOENT", "EPERM", "EEXIST", "ENOMEM", "EFAULT", "ENOTTY", "ENOSPC", "ENODEV"]
CONSTS = {"true": "false", "false": "true", "CMA_MEM_WC": "CMA_MEM_COHERENT", "CMA_MEM_COHERENT": "CMA_MEM_WC"}
# Calls whose removal is a plausible bug (a forgotten unlock, free, list_del, put, ...).
REMOVABLE = {
    "mutex_lock", "mutex_unlock", "kfree", "list_del", "list_del_init", "list_add_tail", "put_pid",
    "kref_get", "kref_init", "cma_mem_buf_put", "cma_mem_buf_free_memory", "atomic_inc", "atomic_dec",
    "cma_mem_unmap_user", "vm_munmap", "wmb", "memset", "cma_mem_fill_pattern", "cma_mem_dump",
    "put_device", "INIT_LIST_HEAD", "strscpy", "list_splice_init", "cond_resched", "mmap_read_unlock",
    "dma_free_wc", "dma_free_coherent", "debugfs_remove_recursive", "misc_deregister",
}  # fmt: skip
SWAPPABLE = {"list_add_tail", "strscpy", "strcmp", "max", "min", "max_t", "min_t", "memcpy", "vm_munmap"}
# Identifiers after which an operator is unary or a declarator, never binary.
KEYWORDS = {
    "return", "case", "sizeof", "if", "while", "for", "else", "do", "switch", "const", "static", "struct",
    "unsigned", "signed", "int", "char", "long", "short", "void", "bool", "u8", "u16", "u32", "u64", "__u8",
    "__u32", "__u64", "size_t", "gfp_t", "phys_addr_t", "dma_addr_t", "atomic_t", "__user", "__force",
}  # fmt: skip
# Functions whose body is never mutated: the ABI self-check (compile-time only), metadata.
FROZEN_FUNCS = {"cma_mem_check_abi"}


@dataclass(frozen=True)
class Mutant:
    id: str
    op: str
    line: int
    col: int
    start: int
    end: int
    old: str
    new: str

    def apply(self, source: str) -> str:
        return source[: self.start] + self.new + source[self.end :]

    def diff(self, source: str) -> str:
        a = source.splitlines(keepends=True)
        b = self.apply(source).splitlines(keepends=True)
        return "".join(difflib.unified_diff(a, b, "a/kmod/cma_mem.c", "b/kmod/cma_mem.c", n=1))


@dataclass
class Tok:
    kind: str
    text: str
    start: int
    end: int


def tokens(source: str) -> list[Tok]:
    """Code tokens only: comments, whitespace and preprocessor lines dropped."""
    out: list[Tok] = []
    pre = _preprocessor_spans(source)
    for m in _TOKEN.finditer(source):
        kind = m.lastgroup or "other"
        if kind in ("comment", "ws") or any(a <= m.start() < b for a, b in pre):
            continue
        out.append(Tok(kind, m.group(), m.start(), m.end()))
    return out


def _preprocessor_spans(source: str) -> list[tuple[int, int]]:
    spans = []
    for m in re.finditer(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", source, re.M):
        spans.append((m.start(), m.end()))
    return spans


def _line_col(source: str, pos: int) -> tuple[int, int]:
    line = source.count("\n", 0, pos) + 1
    return line, pos - (source.rfind("\n", 0, pos) + 1) + 1


def _frozen_spans(toks: list[Tok]) -> list[tuple[int, int]]:
    """Bodies of FROZEN_FUNCS and whole statements of module metadata macros."""
    spans = []
    for i, t in enumerate(toks):
        if t.kind == "ident" and t.text in FROZEN_FUNCS and i + 1 < len(toks) and toks[i + 1].text == "(":
            j = i
            while j < len(toks) and toks[j].text != "{":
                j += 1
            depth, k = 0, j
            while k < len(toks):
                depth += toks[k].text == "{"
                depth -= toks[k].text == "}"
                if depth == 0:
                    break
                k += 1
            if k < len(toks) and toks[j - 1].text == ")":
                spans.append((t.start, toks[k].end))
        if t.kind == "ident" and (t.text.startswith("MODULE_") or t.text in ("module_param", "BUILD_BUG_ON")):
            j = i
            while j < len(toks) and toks[j].text != ";":
                j += 1
            spans.append((t.start, toks[min(j, len(toks) - 1)].end))
    return spans


def _call_end(toks: list[Tok], i: int) -> int:
    """Index of the ')' closing the call whose name is toks[i]."""
    depth = 0
    for j in range(i + 1, len(toks)):
        depth += toks[j].text == "("
        depth -= toks[j].text == ")"
        if depth == 0:
            return j
    return len(toks) - 1


def _args(toks: list[Tok], open_i: int, close_i: int) -> list[tuple[int, int]]:
    """Top-level argument token ranges [a, b) of a call between its parentheses."""
    out, depth, a = [], 0, open_i + 1
    for j in range(open_i + 1, close_i):
        t = toks[j].text
        depth += t in "([{"
        depth -= t in ")]}"
        if t == "," and depth == 0:
            out.append((a, j))
            a = j + 1
    out.append((a, close_i))
    return out


def generate(source: str) -> list[Mutant]:
    toks = tokens(source)
    frozen = _frozen_spans(toks)
    out: list[Mutant] = []

    def add(op: str, start: int, end: int, new: str, k: int = 0) -> None:
        if any(a <= start < b for a, b in frozen):
            return
        line, col = _line_col(source, start)
        mid = f"L{line}C{col}-{op}" + (f"-{k}" if k else "")
        out.append(Mutant(mid, op, line, col, start, end, source[start:end], new))

    for i, t in enumerate(toks):
        prev = toks[i - 1] if i else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t.kind == "op":
            # '<' '>' inside a type or an include are not operators; '*' after '(' or ',' is a deref/type.
            prev2 = toks[i - 2] if i >= 2 else None
            binary = prev is not None and (
                (prev.kind == "ident" and prev.text not in KEYWORDS) or prev.kind == "number" or prev.text in (")", "]")
            )
            if t.text == "*" and binary and prev is not None and prev.kind == "ident":
                # "type *name" declares; "x * y" multiplies: an operand follows an operator or return.
                binary = prev2 is not None and (
                    prev2.text == "return" or (prev2.kind == "op" and prev2.text not in ";{}")
                )
                binary = binary and not (
                    prev2 is not None
                    and prev2.text in ("(", ",")
                    and nxt is not None
                    and nxt.kind == "ident"
                    and toks[i + 2].text in (",", ")", ";", "=")
                )
            if t.text in REL and binary:
                for k, new in enumerate(REL[t.text]):
                    add("rel", t.start, t.end, new, k)
            elif (t.text in ("+", "-", "*") and binary) or t.text in ("+=", "-=", "++", "--"):
                add("arith", t.start, t.end, ARITH[t.text][0])
            elif t.text in LOGIC:
                add("logic", t.start, t.end, LOGIC[t.text][0])
        elif t.kind == "number":
            digits = re.match(r"0[xX][0-9a-fA-F]+|\d+", t.text)
            assert digits
            text = digits.group()
            octal = len(text) > 1 and text[0] == "0" and text[1] not in "xX"
            value = int(text, 8 if octal else 0)
            # Array sizes stay (a compile error, not a bug); everything else +1 / -1.
            if octal or (prev is not None and prev.text == "["):
                continue
            add("bound", t.start, t.end, str(value + 1), 0)
            if value > 0:
                add("bound", t.start, t.end, str(value - 1), 1)
        elif t.kind == "ident":
            if t.text in CONSTS:
                add("const", t.start, t.end, CONSTS[t.text])
            elif t.text in ERRNOS and prev is not None and prev.text == "-":
                alt = ERRNOS[(ERRNOS.index(t.text) + 1) % len(ERRNOS)]
                add("const", t.start, t.end, alt)
            elif t.text == "if" and nxt is not None and nxt.text == "(":
                close = _call_end(toks, i)
                # A guard: the statement after the condition returns (directly or in a block).
                body = toks[close + 1 : close + 4]
                if body and (
                    body[0].text == "return" or (body[0].text == "{" and "return" in _block_texts(toks, close + 1))
                ):
                    add("guard", nxt.start, toks[close].end, "(0)")
            elif (
                t.text in REMOVABLE
                and nxt is not None
                and nxt.text == "("
                and prev is not None
                and prev.text in (";", "{", "}", ")", "else")
            ):
                close = _call_end(toks, i)
                if close + 1 < len(toks) and toks[close + 1].text == ";":
                    add("call", t.start, toks[close + 1].end, ";")
            if t.text in SWAPPABLE and nxt is not None and nxt.text == "(":
                close = _call_end(toks, i)
                args = _args(toks, i + 1, close)
                first = 1 if t.text in ("max_t", "min_t") else 0
                if len(args) >= first + 2:
                    (a0, a1), (b0, b1) = args[first], args[first + 1]
                    if a1 > a0 and b1 > b0:
                        x = source[toks[a0].start : toks[a1 - 1].end]
                        y = source[toks[b0].start : toks[b1 - 1].end]
                        if x != y:
                            add("swap", toks[a0].start, toks[b1 - 1].end, f"{y}, {x}")
    out.sort(key=lambda m: (m.start, m.id))
    return out


def _block_texts(toks: list[Tok], open_i: int) -> set[str]:
    depth, texts = 0, set()
    for j in range(open_i, len(toks)):
        depth += toks[j].text == "{"
        depth -= toks[j].text == "}"
        texts.add(toks[j].text)
        if depth == 0:
            break
    return texts


def sample(mutants: list[Mutant], n: int, seed: int) -> list[Mutant]:
    """A fixed sample, spread over the operators (round robin over a seeded shuffle of each)."""
    rng = random.Random(seed)
    by_op: dict[str, list[Mutant]] = {}
    for m in mutants:
        by_op.setdefault(m.op, []).append(m)
    for ms in by_op.values():
        rng.shuffle(ms)
    picked: list[Mutant] = []
    ops = sorted(by_op)
    while len(picked) < min(n, len(mutants)):
        for op in ops:
            if by_op[op] and len(picked) < n:
                picked.append(by_op[op].pop())
    return sorted(picked, key=lambda m: m.start)


# ---- running ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    id: str
    op: str
    line: int
    verdict: str  # killed | survived | build | infra
    by: str  # suite | fuzz | -
    seconds: float
    detail: str = ""


def _run_one(
    m: Mutant, source: str, target: str, out: Path, fuzz_ops: int, then: str = "", then_k: tuple[str, ...] = ()
) -> Outcome:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        kdir = Path(tmp) / "kmod"
        shutil.copytree(ROOT / "kmod", kdir)
        (kdir / "cma_mem.c").write_text(m.apply(source))
        cli = [sys.executable, "-m", "harness"]  # this interpreter's harness (a venv or a tox env)
        run_out = out / m.id
        scenarios = str(ROOT / "configs" / "scenarios")
        # -x: one failing scenario kills the mutant; the rest would only cost time.
        cmd = [*cli, "run", "-x", "--kmod", str(kdir), "--target", target, "--scenario", scenarios,
               "--out", str(run_out)]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        if p.returncode == 1:
            return Outcome(m.id, m.op, m.line, "killed", "suite", time.monotonic() - start, " | ".join(tail))
        if p.returncode != 0:
            verdict = "build" if "build" in (p.stdout + p.stderr).lower() and p.returncode == 3 else "infra"
            return Outcome(m.id, m.op, m.line, verdict, "-", time.monotonic() - start, " | ".join(tail))
        if fuzz_ops:
            f = subprocess.run(
                [*cli, "fuzz", "--kmod", str(kdir), "--no-shrink",
                 "--target", target, "--ops", str(fuzz_ops), "--seed", "1", "--out", str(run_out / "fuzz")],
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            if f.returncode == 1:
                why = [line for line in f.stdout.splitlines() if line.startswith("MISMATCH")][:1]
                return Outcome(m.id, m.op, m.line, "killed", "fuzz", time.monotonic() - start, " ".join(why))
        if then:
            # A second tier for what the fast target cannot see: a debug kernel's checkers
            # (kmemleak, KASAN, lockdep) on a few scenarios.
            picks = [x for k in then_k for x in ("-k", k)]
            d = subprocess.run(
                [*cli, "run", "-x", "--kmod", str(kdir), "--target", then, "--scenario", scenarios, *picks,
                 "--out", str(run_out / then)],
                capture_output=True, text=True, cwd=ROOT,
            )  # fmt: skip
            if d.returncode == 1:
                tail = (d.stdout + d.stderr).strip().splitlines()[-3:]
                return Outcome(m.id, m.op, m.line, "killed", then, time.monotonic() - start, " | ".join(tail))
        return Outcome(m.id, m.op, m.line, "survived", "-", time.monotonic() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=SOURCE)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--show", metavar="ID")
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--target", default="arm64-fast")
    ap.add_argument("--fuzz-ops", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "mutants-out")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="mutants run at once (each its own guest)")
    ap.add_argument("--resume", action="store_true", help="skip mutants already in OUT/mutants.jsonl")
    ap.add_argument("--then-target", default="", help="run survivors again on this target (e.g. arm64-debug)")
    ap.add_argument("--then-k", action="append", default=[], help="scenario pattern for --then-target (repeatable)")
    ap.add_argument("--equivalent", type=Path, default=ROOT / "benchmarks" / "mutants-equivalent.yaml")
    ap.add_argument("--report", type=Path, help="write the score, per operator, survivors and equivalences (markdown)")
    a = ap.parse_args(argv)
    source = a.source.read_text()
    mutants = generate(source)
    if a.show:
        m = next((m for m in mutants if m.id == a.show), None)
        if m is None:
            print(f"no mutant {a.show}", file=sys.stderr)
            return 2
        print(m.diff(source))
        return 0
    chosen = sample(mutants, a.sample, a.seed) if a.sample else mutants
    if a.list or not a.run:
        for m in chosen:
            print(f"{m.id:24} {m.op:6} {m.old!r} -> {m.new!r}")
        counts: dict[str, int] = {}
        for m in mutants:
            counts[m.op] = counts.get(m.op, 0) + 1
        print(f"{len(chosen)} of {len(mutants)} mutants ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    journal = a.out / "mutants.jsonl"  # one line per mutant as it ends: an interrupted run resumes
    done: dict[str, Outcome] = {}
    if a.resume and journal.exists():
        for line in journal.read_text().splitlines():
            o = Outcome(**json.loads(line))
            done[o.id] = o
    elif journal.exists():
        journal.unlink()
    todo = [m for m in chosen if m.id not in done]
    print(f"{len(chosen)} mutants, {len(done)} already run, {len(todo)} to run with {a.jobs} job(s)", flush=True)

    def one(m: Mutant) -> Outcome:
        r = _run_one(m, source, a.target, a.out, a.fuzz_ops, a.then_target, tuple(a.then_k))
        with lock:
            with journal.open("a") as f:
                f.write(json.dumps(asdict(r)) + "\n")
            print(f"{r.id:24} {r.op:6} {r.verdict:8} {r.by:5} {r.seconds:6.1f} s  {r.detail[:120]}", flush=True)
        return r

    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        for r in pool.map(one, todo):
            done[r.id] = r
    results = [done[m.id] for m in chosen]
    equivalent = load_equivalent(a.equivalent)
    score = Score.of(results, equivalent)
    print(score.line())
    for r in score.wrongly_equivalent:
        print(f"LISTED AS EQUIVALENT BUT KILLED {r.id}: drop it from {a.equivalent}")
    by_id = {m.id: m for m in chosen}
    for r in score.survivors:
        m = by_id[r.id]
        print(f"SURVIVED {r.id}: {m.old!r} -> {m.new!r}\n{m.diff(source)}")
    (a.out / "mutants.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    if a.report:
        a.report.write_text(report(score, by_id, source, equivalent, a))
        print(f"report: {a.report}")
    return 0 if not score.survivors and not score.wrongly_equivalent else 1


def load_equivalent(path: Path) -> dict[str, str]:
    """Mutant id -> why it behaves like the original (argued by hand, checked by nothing else)."""
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
        raise SystemExit(f"{path}: expected a mapping of mutant id to a reason (text)")
    return {str(k): " ".join(str(v).split()) for k, v in data.items()}


@dataclass
class Score:
    results: list[Outcome]
    killed: list[Outcome]
    survivors: list[Outcome]  # survived and not argued equivalent
    equivalent: list[Outcome]  # survived and argued equivalent
    wrongly_equivalent: list[Outcome]  # argued equivalent, yet killed: the argument is wrong
    not_run: list[Outcome]

    @classmethod
    def of(cls, results: list[Outcome], equivalent: dict[str, str]) -> Score:
        killed = [r for r in results if r.verdict == "killed"]
        survived = [r for r in results if r.verdict == "survived"]
        return cls(
            results,
            killed,
            [r for r in survived if r.id not in equivalent],
            [r for r in survived if r.id in equivalent],
            [r for r in killed if r.id in equivalent],
            [r for r in results if r.verdict not in ("killed", "survived")],
        )

    @property
    def denominator(self) -> int:
        return len(self.killed) + len(self.survivors)

    def line(self) -> str:
        pct = 100.0 * len(self.killed) / self.denominator if self.denominator else 0.0
        return (
            f"mutation score: {len(self.killed)}/{self.denominator} non-equivalent mutants killed ({pct:.1f} %); "
            f"{len(self.equivalent)} argued equivalent, {len(self.not_run)} not run (build or infrastructure)"
        )


def report(
    score: Score, by_id: dict[str, Mutant], source: str, equivalent: dict[str, str], a: argparse.Namespace
) -> str:
    """The score as markdown: per operator, who killed what, every survivor with its diff and reason."""
    ops = sorted({r.op for r in score.results})
    rows = []
    for op in ops:
        of = [r for r in score.results if r.op == op]
        rows.append(
            f"| {op} | {len(of)} | {sum(r.verdict == 'killed' and r.by == 'suite' for r in of)} | "
            f"{sum(r.verdict == 'killed' and r.by == 'fuzz' for r in of)} | "
            f"{sum(r.verdict == 'killed' and r.by not in ('suite', 'fuzz') for r in of)} | "
            f"{sum(r in score.equivalent for r in of)} | {sum(r in score.survivors for r in of)} | "
            f"{sum(r in score.not_run for r in of)} |"
        )
    out = [
        "# Mutation score of the shipped suite and the fuzzer",
        "",
        "Generated by `python benchmarks/mutants.py "
        + f"--run -j {a.jobs} --target {a.target} --fuzz-ops {a.fuzz_ops}"
        + (f" --then-target {a.then_target}" + "".join(f" --then-k {k}" for k in a.then_k) if a.then_target else "")
        + f" --report {a.report}`; equivalences argued in `{a.equivalent.relative_to(ROOT)}`.",
        "",
        f"**{score.line()}**",
        "",
        "Each mutant is one automatic change to `kmod/cma_mem.c` (operators in the script's docstring). "
        "It is killed when `cma-harness run -x` on the shipped suite fails (exit 1), or if that passes "
        "when `cma-harness fuzz` finds a mismatch with the driver model, or if that passes too when "
        "the same run on the second target (a debug kernel: kmemleak, KASAN, lockdep) fails.",
        "",
        f"| operator | mutants | killed by the suite | killed by the fuzzer | killed on {a.then_target or '-'} "
        "| equivalent | survived | not run |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if score.survivors:
        out += ["## Survivors (not killed, not argued equivalent)", ""]
        for r in score.survivors:
            out += [f"### {r.id}", "", "```diff", by_id[r.id].diff(source).rstrip(), "```", ""]
    if score.equivalent:
        out += ["## Argued equivalent", ""]
        for r in score.equivalent:
            out += [f"### {r.id}", "", equivalent[r.id], "", "```diff", by_id[r.id].diff(source).rstrip(), "```", ""]
    if score.not_run:
        out += ["## Not run", ""] + [f"- {r.id} ({r.verdict}): {r.detail}" for r in score.not_run] + [""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
