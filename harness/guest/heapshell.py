"""Guest-side shell snippets of the heap backend (the kernel's CMA heap, /dev/dma_heap): the capacity
witness and the side-by-side comparison. The other snippets are in shell.py."""

from __future__ import annotations

from harness.guest.shell import MODULE, PATTERN_PARAM


def heap_probe_command(chunks: str) -> str:
    """Which heap, then allocate through it until ENOMEM (cma_test exhaust ... backend=heap).
    No module involved: `heapinfo` fails with ENOENT where the kernel has no /dev/dma_heap."""
    return f"cma_test heapinfo exhaust {chunks} backend=heap"


def pattern_off_command() -> str:
    """The driver without its test-pattern fill, so both allocators do the same work (the heap zeroes,
    dma_alloc_coherent zeroes; the fill would add a pass over the buffer to the driver's alloc)."""
    return f"grep -q '^{MODULE} ' /proc/modules && echo 0 > {PATTERN_PARAM}"


# While measuring, the console shows warnings and worse only (the live fault detector still sees
# WARN, BUG, oops): the driver's seven dump_mem lines per allocation (KERN_INFO) would otherwise be
# written synchronously to the emulated UART inside CMEM_ALLOCATE and be most of its latency.
QUIET_CONSOLE_COMMAND = "echo 5 > /proc/sys/kernel/printk"
LOUD_CONSOLE_COMMAND = "echo 8 > /proc/sys/kernel/printk"  # as guestinit leaves it


def measure_command(backend: str, size: int, calls: int) -> str:
    """One allocation size on one backend: total allocatable, the fragmentation pattern, latency."""
    heap = " backend=heap" if backend == "heap" else ""
    return f"cma_test exhaust {size}{heap} fragtest {size}{heap} bench {size} {calls}{heap}"


def largest_command(backend: str, granule: int) -> str:
    heap = " backend=heap" if backend == "heap" else ""
    return f"cma_test largest {granule}{heap}"
