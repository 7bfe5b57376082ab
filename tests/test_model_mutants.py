"""benchmarks/mutants.py: the C-aware mutator (no build, no guest)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "benchmarks" / "mutants.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = mod
    spec.loader.exec_module(mod)
    return mod


mutants = _load()

SAMPLE = """\
/* a comment: if (x < 1) return -EINVAL; mutex_unlock(&l); */
#define LIMIT (1 < 2)
static int f(int a, int b)
{
\tconst char *s = "a < b && c";  // also a < comment
\tif (a < b)
\t\treturn -EINVAL;
\tmutex_lock(&l);
\tlist_add_tail(&x->node, &head);
\ta += 3;
\tmutex_unlock(&l);
\treturn a == b && true;
}
"""


def test_each_operator_changes_the_right_place() -> None:
    ms = mutants.generate(SAMPLE)
    by = {(m.op, m.old, m.new) for m in ms}
    assert ("rel", "<", "<=") in by and ("rel", "==", "!=") in by
    assert ("arith", "+=", "-=") in by
    assert ("logic", "&&", "||") in by
    assert ("bound", "3", "4") in by and ("bound", "3", "2") in by
    assert ("guard", "(a < b)", "(0)") in by
    assert ("call", "mutex_unlock(&l);", ";") in by and ("call", "mutex_lock(&l);", ";") in by
    assert ("swap", "&x->node, &head", "&head, &x->node") in by
    assert ("const", "EINVAL", "ENOENT") in by and ("const", "true", "false") in by
    for m in ms:
        text = m.apply(SAMPLE)
        assert text.count("{") == text.count("}") and text.count("(") == text.count(")")
        assert SAMPLE[m.start : m.end] == m.old
        assert text.splitlines()[m.line - 1] != SAMPLE.splitlines()[m.line - 1]


def test_comments_strings_and_preprocessor_are_untouched() -> None:
    for m in mutants.generate(SAMPLE):
        assert m.line not in (1, 2, 5), m  # the comment, the #define, the string and // comment line
    assert all("/*" not in m.diff(SAMPLE).split("@@")[-1].split("\n+")[-1] for m in mutants.generate(SAMPLE))


def test_ids_are_deterministic_and_unique_on_the_driver() -> None:
    source = (ROOT / "kmod" / "cma_mem.c").read_text()
    a, b = mutants.generate(source), mutants.generate(source)
    assert [m.id for m in a] == [m.id for m in b]
    assert len({m.id for m in a}) == len(a) > 200
    assert {m.op for m in a} == {"rel", "arith", "logic", "bound", "guard", "call", "swap", "const"}
    s1 = [m.id for m in mutants.sample(a, 15, 1)]
    assert s1 == [m.id for m in mutants.sample(a, 15, 1)] and len(s1) == 15
    # Nothing in the ABI self-check or the module metadata.
    abi = source.index("static void __init cma_mem_check_abi")
    abi_end = source.index("static int __init cma_mem_init")
    assert not [m for m in a if abi <= m.start < abi_end]
    assert not [m for m in a if source[m.start - 30 : m.start].count("MODULE_")]


def test_diff_names_the_driver_file() -> None:
    m = mutants.generate(SAMPLE)[0]
    d = m.diff(SAMPLE)
    assert d.startswith("--- a/kmod/cma_mem.c") and "\n-" in d and "\n+" in d
