"""Deliberately broken copies of the driver, made by exact-text mutations of kmod/cma_mem.c.

Each mutation names the text it replaces; if the driver changes so that the
text is gone, making the variant fails loudly instead of testing nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

KMOD = Path(__file__).resolve().parents[2] / "kmod"
# A line of the free path (cma_mem_ioc_unmap) that fault variants put code before.
FREE_PATH = "\tlist_del_init(&buf->file_node);\t/* we now hold the list's reference */\n"


@dataclass(frozen=True)
class BrokenVariant:
    name: str
    what: str
    replacements: tuple[tuple[str, str], ...]
    expected_message: str  # a regex the run's output must match

    def make(self, dest: Path) -> Path:
        out = dest / f"kmod-{self.name}"
        shutil.copytree(KMOD, out, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd", "*.mod*"))
        source = out / "cma_mem.c"
        text = source.read_text()
        for old, new in self.replacements:
            if text.count(old) != 1:
                raise AssertionError(f"variant {self.name}: expected exactly one {old!r} in cma_mem.c")
            text = text.replace(old, new)
        source.write_text(text)
        return out


VARIANTS = [
    BrokenVariant(
        "wrong-phys",
        "reports a physical address one page off to user space",
        (("\tub->phy_base = buf->dma;", "\tub->phy_base = buf->dma + PAGE_SIZE;"),),
        r"physical address in dmesg \(0x[0-9a-f]+\) differs from the ioctl's",
    ),
    BrokenVariant(
        "wc-never-freed",
        "never returns write-combine blocks to CMA (seed defects 8/9: wrong or missing free)",
        (("\t\tdma_free_wc(dev, buf->alloc_size, buf->vaddr, buf->dma);", "\t\t;"),),
        r"CMA capacity leak: \d+ bytes fewer allocatable",
    ),
    BrokenVariant(
        "warn-on-free",
        "hits a WARN_ON in the free path: the live fault detector must fail the step",
        (
            (
                FREE_PATH,
                "\tWARN_ON(1);\n" + FREE_PATH,
            ),
        ),
        r"kernel warning: WARNING in cma_mem_ioc(tl|_unmap)",  # the helper may be inlined,
    ),
    BrokenVariant(
        "oops-on-free",
        "dereferences a bad pointer in the free path (an Oops that kills the caller)",
        (
            (
                FREE_PATH,
                "\t*(volatile unsigned long *)16 = 0;\n" + FREE_PATH,
            ),
        ),
        r"kernel oops: Unable to handle kernel NULL pointer dereference in cma_mem_ioc(tl|_unmap)",
    ),
    BrokenVariant(
        "no-test-pattern",
        "leaves the buffer without the test pattern the mapping must show",
        (("\tif (test_pattern)\n", "\tif (0 && test_pattern)\n"),),
        r"op=verify status=fail .*pattern",
    ),
]
