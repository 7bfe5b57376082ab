"""Deliberately broken copies of the driver, made by exact-text mutations of kmod/cma_mem.c.

Each mutation names the text it replaces; if the driver changes so that the
text is gone, making the variant fails loudly instead of testing nothing.
Each variant names the seed defects it brings back
(../shared/notes/seed-driver-defects.md) and the shipped scenario that must
catch it. `python -m tests.guest.broken` prints the table kept in
kmod/README.md (a unit test checks they agree).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

KMOD = Path(__file__).resolve().parents[2] / "kmod"
# A line of the free path (cma_mem_ioc_unmap) that fault variants put code before.
FREE_PATH = "\tlist_del_init(&buf->file_node);\t/* we now hold the list's reference */\n"
RELEASE_LOOP = "\t\tlist_del_init(&buf->file_node);\n\t\tcma_mem_buf_put(buf);\n\t}\n\tkfree(cf);\n"


@dataclass(frozen=True)
class BrokenVariant:
    name: str
    what: str
    defects: tuple[int, ...]  # seed defect numbers this brings back (empty: not a seed defect)
    scenario: str  # the shipped scenario that must catch it
    replacements: tuple[tuple[str, str], ...]
    expected_message: str  # a regex the run's problems must match

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
        "alloc-error-lost",
        "a failed DMA allocation returns 0 to user space",
        (1, 2),
        "exhaustion",
        (
            (
                "\tif (!buf->vaddr) {\n\t\tkfree(buf);\n\t\treturn -ENOMEM;",
                "\tif (!buf->vaddr) {\n\t\tkfree(buf);\n\t\treturn 0;",
            ),
        ),
        r"CMEM_ALLOCATE returned 0 without a block|op=alloc status=fail errno=0 expect=ENOMEM",
    ),
    BrokenVariant(
        "vm-mmap-error-ignored",
        "a failed vm_mmap() is not noticed (and its memory leaks)",
        (3,),
        "bad-input",
        (("\tif (IS_ERR_VALUE(addr)) {\n\t\tret = (long)addr;\n\t\tgoto err_unlist;\n\t}\n", ""),),
        r"'ulimit -v 16384 && cma_test alloc big 32M wc expect=ENOMEM' exited 1, expected 0",
    ),
    BrokenVariant(
        "unknown-ioctl-returns-0",
        "unknown and reserved commands return 0",
        (4,),
        "bad-input",
        (("\tcase CMEM_CONNECT:\n\tdefault:\n\t\treturn -ENOTTY;", "\tcase CMEM_CONNECT:\n\tdefault:\n\t\treturn 0;"),),
        r"op=raw status=fail errno=0 expect=ENOTTY",
    ),
    BrokenVariant(
        "free-unknown-returns-0",
        "freeing a name that does not exist (or twice) returns 0",
        (5,),
        "bad-input",
        (
            (
                "\tif (ret)\n\t\treturn ret;\n" + FREE_PATH,
                "\tif (ret)\n\t\treturn ret == -ENOENT ? 0 : ret;\n" + FREE_PATH,
            ),
        ),
        r"op=free status=fail errno=0 expect=ENOENT",
    ),
    BrokenVariant(
        "null-device",
        "allocates with a NULL struct device, as the seed did",
        (6,),
        "smoke",
        (
            (
                "\t\tbuf->vaddr = dma_alloc_wc(dev, buf->alloc_size, &buf->dma, gfp);\n\telse\n\t\tbuf->vaddr = dma_alloc_coherent(dev,",
                "\t\tbuf->vaddr = dma_alloc_wc(NULL, buf->alloc_size, &buf->dma, gfp);\n\telse\n\t\tbuf->vaddr = dma_alloc_coherent(NULL,",
            ),
        ),
        r"kernel (oops|warning|bug): ",
    ),
    BrokenVariant(
        "wc-never-freed",
        "never returns write-combine blocks to CMA (a wrong or missing free)",
        (8, 9),
        "smoke",
        (("\t\tdma_free_wc(dev, buf->alloc_size, buf->vaddr, buf->dma);", "\t\t;"),),
        r"CMA capacity leak: \d+ bytes fewer allocatable",
    ),
    BrokenVariant(
        "efault-leaves-block",
        "when the result cannot be copied out, the block stays allocated behind user space's back",
        (10,),
        "bad-input",
        (
            (
                "\t\tret = -EFAULT;\n\t\tcma_mem_unmap_user(buf, addr);\n\t\tgoto err_unlist;\n",
                "\t\tcma_mem_buf_put(buf);\n\t\treturn -EFAULT;\n",
            ),
        ),
        r"op=alloc status=fail errno=EEXIST name=ro",
    ),
    BrokenVariant(
        "mmap-unbounded",
        "mmap() does not check the length against the block",
        (11,),
        "bad-input",
        (("\tif (size > buf->len - off) {\n", "\tif (0) {\n"),),
        r"op=mmap status=fail errno=ENXIO expect=EINVAL",
    ),
    BrokenVariant(
        "no-owner-check",
        "any process sharing the file (a forked child) may free and map a block",
        (14, 15),
        "multi-process",
        (("\treturn buf->owner == task_tgid(current);", "\treturn true;"),),
        r"op=free status=fail errno=0 expect=EPERM proc=child",
    ),
    BrokenVariant(
        "close-leaks",
        "closing the file (process exit) does not free its blocks; only rmmod does",
        (16,),
        "lifecycle",
        ((RELEASE_LOOP, "\t\tlist_del_init(&buf->file_node);\n\t}\n\tkfree(cf);\n"),),
        r"CMA capacity leak: \d+ bytes fewer allocatable",
    ),
    BrokenVariant(
        "leak-one-at-rmmod",
        "one block is never freed, not even at rmmod",
        (9, 16),
        "smoke",
        (
            (
                RELEASE_LOOP,
                "\t\tlist_del_init(&buf->file_node);\n\t\tif (cma_mem_leaked++)\n\t\t\tcma_mem_buf_put(buf);\n\t}\n\tkfree(cf);\n",
            ),
            (
                "static int cma_mem_release(struct inode *inode, struct file *file)\n",
                "static int cma_mem_leaked;\nstatic int cma_mem_release(struct inode *inode, struct file *file)\n",
            ),
            (
                "\t\tlist_del(&buf->global_node);\n\t\tcma_mem_buf_free_memory(buf);\n",
                "\t\tlist_del(&buf->global_node);\n",
            ),
        ),
        r"CMA capacity leak: \d+ bytes fewer allocatable",
    ),
    BrokenVariant(
        "duplicate-names",
        "a second block with the same name is accepted",
        (18,),
        "bad-input",
        (
            ("\tif (exists)\n\t\treturn -EEXIST;\n", ""),
            ("\t\tret = -EEXIST;\n", "\t\tret = 0;\n"),
        ),
        r"op=alloc status=fail errno=0 expect=EEXIST",
    ),
    BrokenVariant(
        "ioctl-size-ignored",
        "commands are matched without their size field (any struct size is accepted)",
        (19,),
        "bad-input",
        (
            (
                "\tswitch (cmd) {\n\tcase CMEM_ALLOCATE:",
                "\tif (_IOC_NR(cmd) == _IOC_NR(CMEM_ALLOCATE))\n\t\tcmd = CMEM_ALLOCATE;\n"
                "\tswitch (cmd) {\n\tcase CMEM_ALLOCATE:",
            ),
        ),
        r"op=raw status=fail errno=0 expect=ENOTTY cmd=0xc0086d05",
    ),
    BrokenVariant(
        "raw-kernel-pointer",
        "dump_mem prints the raw kernel address",
        (22,),
        "smoke",
        (('dump_mem_line("KER Base:0x%p", buf->vaddr);', 'dump_mem_line("KER Base:0x%px", buf->vaddr);'),),
        r"dump_mem prints a raw kernel address",
    ),
    BrokenVariant(
        "ioctl-logged-at-err",
        "every ioctl is logged at KERN_ERR",
        (23,),
        "smoke",
        (
            (
                "\tswitch (cmd) {\n\tcase CMEM_ALLOCATE:",
                '\tpr_err("ioctl %x\\n", cmd);\n\tswitch (cmd) {\n\tcase CMEM_ALLOCATE:',
            ),
        ),
        r"driver logged at err level: cma_mem: ioctl",
    ),
    BrokenVariant(
        "wrong-phys",
        "reports a physical address one page off to user space (not a seed defect: a cross-check)",
        (),
        "smoke",
        (("\tub->phy_base = buf->dma;", "\tub->phy_base = buf->dma + PAGE_SIZE;"),),
        r"physical address in dmesg \(0x[0-9a-f]+\) differs from the ioctl's",
    ),
    BrokenVariant(
        "deadlock-on-free",
        "takes the driver mutex twice in the free path: the task hangs in D state",
        (),
        "smoke",
        ((FREE_PATH, "\tmutex_lock(&cma_mem_lock);\n" + FREE_PATH),),
        r"kernel hung_task: INFO: task hung in cma_mem_ioc(tl|_unmap)",
    ),
    BrokenVariant(
        "no-test-pattern",
        "leaves the buffer without the test pattern the mapping must show (not a seed defect)",
        (),
        "smoke",
        (("\tif (test_pattern)\n", "\tif (0 && test_pattern)\n"),),
        r"op=verify status=fail .*pattern",
    ),
    BrokenVariant(
        "warn-on-free",
        "hits a WARN_ON in the free path: the live fault detector must fail the step",
        (),
        "smoke",
        ((FREE_PATH, "\tWARN_ON(1);\n" + FREE_PATH),),
        r"kernel warning: WARNING in cma_mem_ioc(tl|_unmap)",  # the helper may be inlined
    ),
    BrokenVariant(
        "oops-on-free",
        "dereferences a bad pointer in the free path (an Oops that kills the caller)",
        (),
        "smoke",
        ((FREE_PATH, "\t*(volatile unsigned long *)16 = 0;\n" + FREE_PATH),),
        r"kernel oops: BUG: unable to handle kernel NULL pointer dereference in cma_mem_ioc(tl|_unmap)",
    ),
]

# Bugs only a debug kernel sees (tests/guest/test_targets.py runs them on arm64-debug): the
# memory comes back, so capacity and the CMA counters stay right; only the checkers notice.
DEBUG_VARIANTS = [
    BrokenVariant(
        "node-never-kfreed",
        "frees the DMA memory but never kfree()s the block's list node (the seed's defect 9, node half)",
        (9,),
        "smoke",
        (("\tput_pid(buf->owner);\n\tkfree(buf);\n", "\tput_pid(buf->owner);\n"),),
        r"kernel kmemleak: memory leak in cma_mem_ioc(tl|_allocate)",
    ),
    BrokenVariant(
        "use-after-free-on-unmap",
        "reads the block after dropping its last reference in the free path",
        (),
        "smoke",
        (
            (
                "\tcma_mem_buf_put(buf);\n\treturn 0;\n}\n\n/* CMEM_GET_PHYS",
                "\tcma_mem_buf_put(buf);\n\treturn READ_ONCE(buf->len) ? 0 : -EIO;\n}\n\n/* CMEM_GET_PHYS",
            ),
        ),
        r"kernel bug: KASAN: use-after-free Read in cma_mem_ioc(tl|_unmap)",
    ),
]

# Defects a variant brings back only in part, and why.
PARTLY: dict[int, str] = {
    8: "the missing-free form; swapping dma_free_wc and dma_free_coherent is invisible on arm64 dma-direct "
    "(both free the same remap the same way)",
}

# Seed defects no variant brings back, and why.
NOT_REINTRODUCED: dict[int, str] = {
    7: "dma_alloc_writecombine/dma_free_writecombine no longer exist: a build failure, exit 3",
    12: "remap_pfn_range(PAGE_SHARED) vs dma_mmap_wc: a cacheability mismatch; QEMU TCG emulates no caches, "
    "so no guest test can observe it (the driver uses dma_mmap_*; checked in review)",
    13: "clearing VM_IO: no visible effect under TCG, and vm_flags writes do not compile on 6.3+",
    17: "shared global state machine racing with mmap(): the driver has no such state; races need a "
    "concurrent stress scenario (multi-process covers ownership, not timing)",
    20: "32/64-bit layout: fixed by the uapi header; checked at build time by static asserts in both the "
    "driver and cma_test (arm64 and armhf); the armhf-on-arm64 run comes with the arm64-compat target",
    21: "LPAE dma_addr_t overwrite: 32-bit armv7 kernels only (armv7-virt target, issue 5)",
    24: "the seed's test program: cma_test never waits for input, frees what it allocates, prints 64-bit "
    "values with PRIx64; its records are parsed strictly (a missing record fails the step)",
}


def table() -> str:
    """The defect -> scenario -> variant table of kmod/README.md."""
    rows = ["| seed defect | caught by scenario | broken variant (tests/guest/broken.py) |", "|---|---|---|"]
    for number in range(1, 25):
        variants = [v for v in VARIANTS + DEBUG_VARIANTS if number in v.defects]
        if variants:
            scenarios = ", ".join(
                sorted({v.scenario + (" on arm64-debug" if v in DEBUG_VARIANTS else "") for v in variants})
            )
            note = f" ({PARTLY[number]})" if number in PARTLY else ""
            rows.append(f"| {number} | {scenarios} | {', '.join(v.name for v in variants)}{note} |")
        else:
            rows.append(f"| {number} | - | not reintroduced: {NOT_REINTRODUCED[number]} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
