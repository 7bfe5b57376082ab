"""Titles of Linux kernel reports, as syzkaller gives them.

The specification is syzkaller's report parser (github.com/google/syzkaller,
pkg/report/linux.go and report.go, Apache-2.0) and the expected titles of its
test corpus; this is an independent Python rendering of that behaviour, not a
copy of its code or tables.

A *header* is the needle that starts a report ("BUG:", "WARNING:", "Unable to
handle kernel", ...). Each header has an ordered list of rules. A rule's
`title` pattern is searched in the report text (the header line and the lines
that followed it); the rule matching earliest wins, ties going to the first in
the list. A rule may also need a `report` pattern (which then supplies the
arguments) and a guilty `stack` frame. The title is the rule's format filled
with the captured arguments and then the frames, with everything that changes
between runs (addresses, numbers, executor ids, line numbers) replaced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

# ---- building blocks -------------------------------------------------------------------------

_TOKENS = {
    # a code address as the kernel prints it: [<ffffffff81234567>] (or hashed, before hashing is ready)
    "@PC@": r"\[<?(?:(?:0x)?[0-9a-f]+|\(____ptrval____\))>?\]",
    "@FN@": r"([A-Za-z0-9_]+)[.+]",  # a function name followed by +0x.. or a .isra/.cold suffix
    "@SRC@": r"([A-Za-z0-9_./-]+\.[a-z]+:[0-9]+)",  # path/file.c:123
    "@TASK@": r"[\s\S]{0,100}?",  # a task name (may contain anything)
}


def rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    for token, value in _TOKENS.items():
        pattern = pattern.replace(token, value)
    return re.compile(pattern, flags)


# Where a register dump names the faulting function: x86 "RIP: 0010:f+0x..", powerpc "NIP",
# arm64 "pc : f+0x..", arm "PC is at f+0x..". Some forms carry no name (a bare address, "(null)").
RIP = rx(
    r"(?:IP|NIP|pc |PC is at):? (?:(?:\d+:)?(?:@PC@ +){0,2}@FN@|(?:\d+:)?0x[0-9a-f]+"
    r"|(?:\d+:)?@PC@ +\[< *\(null\)>\] +\(null\)|\d+: +\(null\))"
)
# arm since Linux 5.19 prints frames as "caller [module] from callee+0x../0x..", with no heading.
_ARM_FROM = r"^ *([A-Za-z0-9_]+)[\w.]*(?: \[\w+\])? from @FN@"
CALL_TRACE = rx(r"Call [Tt]race:|Backtrace:|" + _ARM_FROM)
ARM_FROM = rx(_ARM_FROM, re.M)
# Lines after which a stack trace follows (and which end the one before).
STACK_STARTS: tuple[re.Pattern[str], ...] = (
    rx(r"Call [Tt]race"),
    rx(r"Allocated:"),
    rx(r"Allocated by task \d+:"),
    rx(r"Freed:"),
    rx(r"Freed by task \d+:"),
    rx(r"[^k] backtrace(?: \(crc [0-9a-fA-F]*\))?:"),  # kmemleak's, not lockdep's "stack backtrace:"
    rx(r"Backtrace:"),
    rx(r"Uninit was stored to memory at"),
)
# riscv's show_regs() ends with this line and then dumps the stack without a heading.
RISCV_STACK = rx(r"status: [0-9a-f]{16} badaddr: [0-9a-f]{16} cause: [0-9a-f]{16}")
ALL_STACK_STARTS = (*STACK_STARTS, RISCV_STACK)
FRAME_LINES: tuple[re.Pattern[str], ...] = (
    rx(r"^ *(?:@PC@ ){0,2}@FN@"),  # " [<..>] f+0x1/0x2" or " f+0x1/0x2"
    rx(r"^ *@PC@ \(([A-Za-z0-9_.]+)\) from @PC@ \(@FN@"),  # arm: "[<..>] (f) from [<..>] (g+0x..)"
    rx(_ARM_FROM),  # arm since 5.19: "f [mod] from g+0x../0x.."
)
# The three as one pattern (all anchored at the line start, tried in this order).
_ANY_FRAME = re.compile("|".join(f"(?:{p.pattern})" for p in FRAME_LINES))
# A fault-injection stack mixed into a report makes it unreliable.
INJECTED = rx(r"^(?: @PC@)? should_fail(?:slab)?(?:\.[a-z0-9.]+)?\+0x")

# Frames that are how the kernel detected or reported a problem, or generic helpers that the
# real culprit called: never the guilty frame (matched anywhere in the name).
_HELPER_FRAMES = [
    # sanitizers and checkers
    r"__sanitizer|__asan|kasan|hwasan|__msan|kmsan|kcsan_setup_watchpoint|check_memory_region",
    r"check_heap_object|check_object|read_word_at_a_time|(?:read|write)_once_.*nocheck",
    r"print_address_description|__phys_addr|__fortify_report",
    # reporting and traps
    r"panic|invalid_op|report_bug|fixup_bug|print_report|print_usage_bug|do_error|_trap$|do_trap",
    r"unwind_backtrace|show_stack|dump_stack|walk_stack|dump_backtrace|warn_slowpath|warn_alloc|warn_bogus|__warn",
    r"print_tainted|^get_taint$|assertfail|hex_dump_to_buffer|print_hex_dump",
    r"program_check_exception|program_check_common|stack_trace_consume_entry|arch_stack_walk|stack_trace_save",
    # arm64 fault entry
    r"do_(?:kernel|translation)_fault|do_mem_abort|el1_abort|el1h_64_sync(?:_handler)?",
    # allocation and freeing
    r"alloc_page|k?v?[mzc]alloc|krealloc|kmem_cache|allocate_slab|__alloc_frozen_pages_noprof|slab_",
    r"folio_(?:alloc|unlock)|filemap_alloc_folio|__filemap_get_folio|find_or_create_page",
    r"do_read_cache_folio|read_cache_page|pagecache_get_page|grab_cache_page_write_begin",
    r"^kv?free$|kfree_skb|memdup|strn?dup|kv?asprintf",
    # locking, lockdep, debug objects
    r"lockdep|lock_acquire|lock_release|lock_class|mark_lock|(?:reacquire|mark)_held_locks|print_unlock",
    r"imbalance_bug|debug_object|timer_is_static_object|work_is_static_object|(?:trace|lockdep)_(?:hard|soft)irq",
    r"bh_enable|bh_disable|raw_spin_rq|spin_lock|spin_trylock|spin_unlock|(?:read|write)_(?:lock|trylock|unlock)",
    r"^down$|down_read|down_write|down_trylock|up_read|up_write|^mutex_|^__mutex_|^rt_mutex_",
    r"owner_on_cpu|osq_lock|osq_unlock|^(?:un)?lock_page|seqprop_assert",
    # atomics, reference counts, waiting
    r"atomic(?:64)?_(?:dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)|(?:set|clear|change|test)_bit",
    r"^refcount_|^kref_|ref_tracker|__wake_up|^complete$|wait_for_completion|finish_wait",
    r"__might_fault|might_fault|might_sleep|__might_resched|perf_trace",
    # memory and string helpers, printing
    r"memcpy|memcmp|memset|memchr|memmove|strcmp|strncmp|strcpy|strlcpy|strncpy|strscpy|strlen",
    r"strstr|strnstr|strnlen|strchr|string|pointer|snprintf|scnprintf|printk|va_format",
    r"dev_(?:info|notice|warn|err|alert|crit|emerg)",
    r"copy_(?:to|from)_user|copy_(?:to|from)_iter|copy_page_(?:to|from)_iter|copy_folio_to_iter",
    r"^copyin$|^copyout$|put_user|get_user",
    # containers
    r"list_add|list_del|list_replace|list_move|list_splice|^rb_|^__rb_|^klist_|xas_(?:start|load|find)",
    r"rhashtable_lookup|ida_free|_indirect_thunk_",
    # timers and work
    r"del_timer|flush_work|__cancel_work_timer|cancel_work_sync|try_to_grab_pending|flush_workqueue",
    r"drain_workqueue|destroy_workqueue|queue_work|insert_work|__queue_delayed_work|queue_delayed_work_on",
    r"kthread_stop|lock_timer_base|__timer_delete_sync|sk_stop_timer_sync|__mod_timer|cleanup_srcu_struct",
    # the driver model and its teardown
    r"kobject_|add_uevent_var|get_device_parent|device_add|device_del|device_unregister|device_destroy",
    r"device_release|devres_release_all|hwrng_unregister|i2c_del_adapter|__unregister_client",
    r"device_for_each_child|rollback_registered|unregister_netdev|sysfs_remove|device_remove_file",
    r"tty_unregister_device|^put_device$",
    r"dummy_urb_enqueue|usb_kill_urb|usb_kill_anchored_urbs|usb_control_msg|usb_hcd_submit_urb|usb_submit_urb",
    # port and register I/O, checksums
    r"(?:read|write)[bwlq]$|logic_in|logic_out|^crc\d+|crc_itu_t",
    # inodes, dentries, pages
    r"^iput$|^iput_final$|^ihold$|drop_nlink|dput|mark_buffer_dirty|find_lock_entries",
    r"truncate_inode_pages_range|extract_(?:user|iter)_to_sg",
]
# Syscall entry names differ by architecture; the title uses the bare name (the shortest strip).
_SYSCALL_PREFIXES = (
    "SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_", "___sys_", "__sys_",
    "__se_", "__se_sys_", "__do_sys_", "compat_SYSC_", "compat_SyS_", "ksys_",
)  # fmt: skip


def canonical_frame(name: str) -> str:
    best = name
    for prefix in _SYSCALL_PREFIXES:
        if name.startswith(prefix) and len(name) - len(prefix) < len(best):
            best = name[len(prefix) :]
    return best


# ---- guilty-frame pickers for hangs and stalls --------------------------------------------------

# Where the looping or waiting code was entered from: the frame just above one of these names
# the stall (a syscall, a work item, a timer...) better than wherever the loop was interrupted.
_STALL_ENTRIES = re.compile(
    "|".join(
        [
            r"process_one_work|do_syscall_|do_fast_syscall_|sysenter_dispatch|tracesys_phase2|el0_svc_handler",
            r"invoke_syscall|ret_fast_syscall|netif_receive_skb|do_softirq|call_timer_fn|_run_timers",
            r"run_timer_softirq|hrtimer_run|run_ksoftirqd|smpboot_thread_fn|^kthread$|start_secondary",
            r"cpu_startup_entry|ret_from_fork",
            r"vfs_write|vfs_read|vfs_iter_read|vfs_iter_write|do_iter_read|do_iter_write|call_read_iter",
            r"call_write_iter|new_sync_read|new_sync_write|vfs_ioctl|ksys_ioctl|compat_ioctl|compat_sys_ioctl",
            r"blkdev_driver_ioctl|blkdev_ioctl|do_iter_readv_writev|^call_mmap|mmap_region|do_mmap",
            r"do_dentry_open|vfs_open",
            r"^sock_sendmsg|^sock_recvmsg|^sock_release|^__sock_release|^setsockopt$|kernel_setsockopt",
            r"sock_common_setsockopt|^listen$|kernel_listen|sk_common_release|^sock_mmap|^accept$",
            r"kernel_accept|^sock_do_ioctl|^sock_ioctl|^compat_sock_ioctl|^nfnetlink_rcv_msg",
            r"^rtnetlink_rcv_msg|^netlink_dump|^(?:sys_)?(?:socketpair|connect|ioctl)",
            r"__do_fault|do_page_fault|^page_fault$|__fput|task_work_run|exit_to_usermode|smp_call_function",
            r"tasklet_action|tasklet_hi_action",
        ]
    )
)


def stall_frame(frames: Sequence[str]) -> str:
    above = frames[0]
    for frame in frames:
        if _STALL_ENTRIES.search(frame):
            return "smp_call_function" if "smp_call_function" in frame else above
        above = frame
    return ""


_HANG_BUCKETS = {"rtnl_lock": "", "synchronize_rcu": "synchronize_rcu", "synchronize_srcu": "synchronize_rcu",
                 "synchronize_net": "synchronize_rcu", "synchronize_sched": "synchronize_rcu"}  # fmt: skip
_HANG_WAITING = ("sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread", "wait", "synchronize",
                 "context_switch", "__switch_to", "cancel_delayed_work", "rcu_barrier")  # fmt: skip


def hang_frame(frames: Sequence[str]) -> str:
    """A hung task waits wherever its lock's owner left it: group the RCU and RTNL waits, else the first
    frame that is not a way of waiting."""
    for frame in frames:
        for anchor, bucket in _HANG_BUCKETS.items():
            if anchor in frame:
                return bucket or frame
    return next((f for f in frames if not any(w in f for w in _HANG_WAITING)), "")


# ---- rules -----------------------------------------------------------------------------------

TRACE = None  # in Stack.steps: read a stack trace from here


@dataclass(frozen=True)
class Stack:
    """How to find the guilty frame: steps are patterns to find in order (their groups capture frames)
    or TRACE; `fallback` is tried when the steps find nothing."""

    steps: tuple[re.Pattern[str] | None, ...]
    skip: tuple[str, ...] = ()
    fallback: tuple[re.Pattern[str] | None, ...] = ()
    pick: Callable[[Sequence[str]], str] | None = None


@dataclass(frozen=True)
class Rule:
    title: re.Pattern[str]
    fmt: str  # {1}, {2}, ...: the captured groups, then the frames found
    report: re.Pattern[str] | None = None
    stack: Stack | None = None
    corrupted: bool = False  # a title that says the report is damaged
    needs_trace: bool = True  # a report of this kind must carry a stack trace, else it is corrupted
    kind: str = ""  # overrides the header's kind


@dataclass(frozen=True)
class Header:
    needle: str  # substring of the line that starts a report
    kind: str
    rules: tuple[Rule, ...]
    not_a_report: re.Pattern[str] | None = None  # lines with the needle that start no report
    kinds: tuple[tuple[re.Pattern[str], str], ...] = field(default=())  # kind by the header line

    def kind_of(self, line: str) -> str:
        return next((k for p, k in self.kinds if p.search(line)), self.kind)


def _trace(*skip: str, pick: Callable[[Sequence[str]], str] | None = None) -> Stack:
    return Stack((CALL_TRACE, TRACE), skip, pick=pick)


def _rip_trace(*skip: str, pick: Callable[[Sequence[str]], str] | None = None) -> Stack:
    return Stack((RIP, CALL_TRACE, TRACE), skip, pick=pick)


_WARN_TOP = rx("(?:" + RIP.pattern + r"|--- interrupt: [0-9]+ at @FN@)")


def _warn(*skip: str) -> Stack:
    # Newer kernels trap and print the registers (RIP/pc line) first; older ones just the stack.
    return Stack((_WARN_TOP, TRACE), skip, fallback=(CALL_TRACE, TRACE))


def _any(*alternatives: str) -> str:
    return "(?:" + "|".join(alternatives) + ")"


def R(title: str, fmt: str, report: str | None = None, **kw: object) -> Rule:
    return Rule(rx(title), fmt, rx(report) if report else None, **kw)  # type: ignore[arg-type]


_LOCKDEP_AT = r"at: (?:@PC@ +)?@FN@"
_EMPTY = r"[ \t\r\f\v]*(?:\n|$)"

HEADERS: tuple[Header, ...] = (
    Header(
        "BUG:",
        "bug",
        (
            R(r"BUG: KASAN:", "KASAN: {1} {3} in {4}",
              r"BUG: KASAN: ([a-z\-]+) in @FN@(?:.*\n)+?.*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)",
              stack=Stack((rx(r"BUG: KASAN: (?:[a-z\-]+) in @FN@"), CALL_TRACE, TRACE),
                          ("kernel_fault", "tag_check", "mem_abort", "^el1_", "^el1h_"))),
            R(r"BUG: KASAN:", "KASAN: invalid-free in {2}",
              r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in @FN@",
              stack=Stack((rx(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in @FN@"),
                           CALL_TRACE, TRACE), ("slab_", "kfree", "vunmap", "vfree"))),
            R(r"BUG: KASAN: ([a-z\-]+) on address(?:.*\n)+?.*(Read|Write) of size ([0-9]+)", "KASAN: {1} {2}"),
            R(r"BUG: KASAN: (.*)", "KASAN: {1}", corrupted=True),
            R(r"BUG: KMSAN: kernel-usb-infoleak", "KMSAN: kernel-usb-infoleak in {2}",
              r"BUG: KMSAN: kernel-usb-infoleak in @FN@", needs_trace=False,
              stack=Stack((TRACE, rx(r"(Local variable .* created at:|Uninit was created at:)"), TRACE),
                          ("alloc_skb", "usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg",
                           "usb_interrupt_msg", "usb_control_msg"))),
            R(r"BUG: KMSAN:", "KMSAN: {1} in {3}", r"BUG: KMSAN: ([a-z\-]+) in @FN@", needs_trace=False,
              stack=Stack((TRACE, rx(r"(Local variable .* created at:|Uninit was created at:)"), TRACE),
                          ("alloc_skb", "netlink_ack", "netlink_rcv_skb", "_encrypt$",
                           "^(?:crypto|cipher|drbg|rng)_"))),
            R(r"BUG: KCSAN: data-race", "KCSAN: {1}", r"BUG: KCSAN: (.*)", needs_trace=False),
            R(r"BUG: KCSAN:", "KCSAN: {1}", r"BUG: KCSAN: (.*)", needs_trace=False),
            R(r"BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in @FN@", "KFENCE: {1} {2} in {4}",
              stack=Stack((rx(r"BUG: KFENCE: (?:[a-z\- ]+) in @FN@"), TRACE))),
            R(r"BUG: KFENCE: invalid free in @FN@", "KFENCE: invalid free in {2}", needs_trace=False,
              stack=Stack((rx(r"BUG: KFENCE: (?:[a-z\- ]+) in @FN@"), TRACE))),
            R(r"BUG: KFENCE: invalid (read|write) in @FN@", "KFENCE: invalid {1} in {3}",
              stack=Stack((rx(r"BUG: KFENCE: (?:[a-z\- ]+) in @FN@"), TRACE))),
            R(r"BUG: KFENCE: memory corruption in @FN@", "KFENCE: memory corruption in {2}", needs_trace=False,
              stack=Stack((rx(r"BUG: KFENCE: (?:[a-z\- ]+) in @FN@"), TRACE))),
            R(r"BUG: " + _any("unable to handle kernel paging request", "unable to handle page fault for address",
                              "Unable to handle kernel data access"),
              "BUG: unable to handle kernel paging request in {1}", stack=_rip_trace(), kind="oops"),
            R(r"BUG: " + _any("unable to handle kernel NULL pointer dereference", "kernel NULL pointer dereference",
                              "Kernel NULL pointer dereference"),
              "BUG: unable to handle kernel NULL pointer dereference in {1}", stack=_rip_trace(), kind="oops"),
            R(r"BUG: (?:unable to handle kernel|Unable to handle kernel)", "BUG: unable to handle kernel",
              corrupted=True, kind="oops"),
            R(r"BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion|bad magic"
              r"|wrong owner|wrong CPU|trylock failure on UP)", "BUG: {1} {2} in {3}",
              stack=_trace("spin_", "_lock", "_unlock")),
            R(r"BUG: soft lockup", "BUG: soft lockup in {1}", stack=_rip_trace(pick=stall_frame)),
            R(r"BUG: .*still has locks held!", "BUG: still has locks held in {1}",
              r"BUG: .*still has locks held!(?:.*\n)+?.*@PC@ +@FN@"),
            R(r"BUG: scheduling while atomic", "BUG: scheduling while atomic in {1}", stack=_trace("schedule")),
            R(r"BUG: lock held when returning to user space", "BUG: lock held when returning to user space in {1}",
              r"BUG: lock held when returning to user space(?:.*\n)+?.*leaving the kernel with locks still held"
              r"(?:.*\n)+?.*at: (?:@PC@ +)?@FN@", needs_trace=False),
            R(r"BUG: bad unlock balance detected!", "BUG: bad unlock balance in {1}",
              stack=Stack((rx(r"@PC@ +@FN@"), CALL_TRACE, TRACE))),
            R(r"BUG: held lock freed!", "BUG: held lock freed in {1}", r"BUG: held lock freed!(?:.*\n)+?.*@PC@ +@FN@"),
            R(r"BUG: Bad rss-counter state", "BUG: Bad rss-counter state", needs_trace=False),
            R(r"BUG: non-zero nr_ptes on freeing mm", "BUG: non-zero nr_ptes on freeing mm", needs_trace=False),
            R(r"BUG: non-zero nr_pmds on freeing mm", "BUG: non-zero nr_pmds on freeing mm", needs_trace=False),
            # The block device and filesystem type would split one bug into many.
            R(r"BUG: Dentry .* still in use", "BUG: Dentry still in use in {1}",
              r"BUG: Dentry .* still in use \([0-9]+\) \[(unmount) of ([^\]]+)\]"),
            R(r"BUG: Bad page (state|cache)", "BUG: Bad page {1} in {2}",
              stack=Stack((rx(r"page last allocated"), TRACE),
                          ("(?:free|put|get|update|release)_page", "free_unref", "^_*folio", "truncate_inode_pages",
                           "page_frag_free", "alloc", "vmap", "page_owner"))),
            R(r"BUG: Bad page map", "BUG: Bad page map"),
            R(r"BUG: workqueue lockup", "BUG: workqueue lockup", needs_trace=False),
            R(r"BUG: sleeping function called from invalid context at (.*)",
              "BUG: sleeping function called from invalid context in {2}", stack=_trace()),
            R(r"BUG: using ([a-z_]+)\(\) in preemptible", "BUG: using {1}() in preemptible code in {2}",
              stack=_trace("dump_stack", "preemption", "preempt", "debug_", "processor_id", "this_cpu")),
            R(r"BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {1}",
              r"BUG: workqueue leaked lock or atomic(?:.*\n)+?.*last function: ([a-zA-Z0-9_]+)\n", needs_trace=False),
            R(r"BUG: memory leak", "memory leak in {1}", kind="kmemleak",
              stack=Stack((rx(r"backtrace(?: \(crc [0-9a-fA-F]*\))?:"), TRACE), (
                  "kmemleak", "mmap", "kmem", "slab", "alloc", "create_object", "idr_get", "list_lru_init",
                  "kasprintf", "kvasprintf", "pcpu_create", "strdup", "strndup", "memdup"))),
            R(r"BUG: .*stack guard page was hit at", "BUG: stack guard page was hit in {1}",
              stack=_rip_trace(pick=stall_frame)),
            # arm/arm64 word lockdep's complaint differently from x86: give it x86's title.
            R(r"BUG: Invalid wait context", "WARNING: locking bug in {1}", stack=_trace("lock_sock", "release_sock")),
            R(r"BUG:" + _EMPTY, "BUG: corrupted", corrupted=True),
        ),
        rx(r"ODEBUG:|Boot_DEBUG:|xlog_status:|DEBUG:|BUG: no syscalls can create resource"),
        (
            (rx(r"BUG: soft lockup"), "soft_lockup"),
            (rx(r"BUG: memory leak"), "kmemleak"),
            (rx(r"BUG: (?:unable to handle|Unable to handle|kernel NULL|Kernel NULL)"), "oops"),
        ),
    ),
    Header(
        "WARNING:",
        "warning",
        (
            R(r"WARNING: .*lib/debugobjects\.c.* (?:debug_print|debug_check|at)", "WARNING: ODEBUG bug in {1}",
              stack=_warn("debug_", "rcu", "hrtimer_", "timer_", "work_", "percpu_", "vunmap", "vfree", "__free_",
                          "debug_check", "kobject_")),
            R(r"WARNING: .*mm/usercopy\.c.* (?:usercopy_warn|at)", "WARNING: bad usercopy in {1}",
              stack=_warn("usercopy", "__check")),
            R(r"WARNING: .*lib/kobject\.c.* (?:kobject_|at)", "WARNING: kobject bug in {1}", stack=_warn("kobject_")),
            R(r"WARNING: .*fs/proc/generic\.c.* (?:proc_register|at)", "WARNING: proc registration bug in {1}",
              stack=_warn("proc_")),
            R(r"WARNING: .*lib/refcount\.c.* (?:refcount_|at)", "WARNING: refcount bug in {1}",
              stack=_warn("refcount", "kobject_")),
            R(r"WARNING: .*kernel/locking/lockdep\.c.*lock_", "WARNING: locking bug in {1}",
              stack=_warn("lock_sock", "release_sock")),
            R(r"WARNING: .*still has locks held!", "WARNING: still has locks held in {1}",
              r"WARNING: .*still has locks held!(?:.*\n)+?.*at: @FN@"),
            R(r"WARNING: Nested lock was not taken", "WARNING: nested lock was not taken in {1}", stack=_warn()),
            R(r"WARNING: lock held when returning to user space",
              "WARNING: lock held when returning to user space in {1}",
              r"WARNING: lock held when returning to user space(?:.*\n)+?.*leaving the kernel with locks still held"
              r"(?:.*\n)+?.*at: (?:@PC@ +)?@FN@", needs_trace=False),
            R(r"WARNING: .*mm/.*\.c.* k?.?malloc", "WARNING: kmalloc bug in {1}",
              stack=_warn("kmalloc", "krealloc", "slab", "kmem")),
            R(r"WARNING: .*mm/vmalloc.c.*__vmalloc_node", "WARNING: zero-size vmalloc in {1}", stack=_warn()),
            R(r"WARNING: .* usb_submit_urb", "WARNING in {1}/usb_submit_urb",
              stack=_warn("usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg",
                          "usb_control_msg")),
            R(r"WARNING: @SRC@ at 0x\d+, CPU#\d+", "WARNING in {2}", stack=_warn()),
            R(r"WARNING: .* at @SRC@ @FN@", "WARNING in {3}", stack=_warn()),
            R(r"WARNING: @SRC@ at @FN@", "WARNING in {3}", stack=_warn()),
            R(r"WARNING: \[.*\] @SRC@ at @FN@.*", "WARNING in {3}", stack=_warn()),
            R(r"WARNING: possible circular locking dependency detected", "possible deadlock in {1}",
              r"WARNING: possible circular locking dependency detected(?:.*\n)+?.*is trying to acquire lock",
              stack=Stack((rx(_LOCKDEP_AT), rx(_LOCKDEP_AT), TRACE),
                          ("process_one_work", "flush_workqueue", "drain_workqueue", "destroy_workqueue"))),
            R(r"WARNING: possible irq lock inversion dependency detected", "possible deadlock in {1}",
              r"WARNING: possible irq lock inversion dependency detected(?:.*\n)+?.*just changed the state of lock"
              r"(?:.*\n)+?.*" + _LOCKDEP_AT),
            R(r"WARNING: .*-safe -> .*-unsafe lock order detected", "possible deadlock in {1}",
              stack=Stack((rx(r"which became (?:.*) at:"), TRACE))),
            R(r"WARNING: possible recursive locking detected", "possible deadlock in {1}",
              r"WARNING: possible recursive locking detected(?:.*\n)+?.*is trying to acquire lock(?:.*\n)+?.*"
              + _LOCKDEP_AT),
            R(r"WARNING: inconsistent lock state", "inconsistent lock state in {2}",
              r"WARNING: inconsistent lock state(?:.*\n)+?.*takes(?:.*\n)+?.*" + _LOCKDEP_AT, stack=_trace()),
            R(r"WARNING: suspicious RCU usage", "WARNING: suspicious RCU usage in {2}",
              r"WARNING: suspicious RCU usage(?:.*\n)+?.*?@SRC@", stack=_trace("rcu", "kmem", "slab")),
            R(r"WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value",
              "WARNING: kernel stack regs has bad '{1}' value", needs_trace=False),
            R(r"WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value",
              "WARNING: kernel stack frame pointer has bad value", needs_trace=False),
            R(r"WARNING: bad unlock balance detected!", "WARNING: bad unlock balance in {1}",
              stack=Stack((rx(r"@PC@ +@FN@"), CALL_TRACE, TRACE))),
            R(r"WARNING: held lock freed!", "WARNING: held lock freed in {1}",
              r"WARNING: held lock freed!(?:.*\n)+?.*at:(?: @PC@)? +@FN@"),
            R(r"WARNING: kernel stack regs .* has bad 'bp' value", "WARNING: kernel stack regs has bad value",
              needs_trace=False),
            R(r"WARNING: kernel stack frame pointer .* has bad value", "WARNING: kernel stack regs has bad value",
              needs_trace=False),
            R(r"WARNING:" + _EMPTY, "WARNING: corrupted", corrupted=True),
        ),
        # What user space and a few harmless kernel notices print with the same word.
        rx(r"WARNING: /etc/ssh/moduli does not exist|WARNING: workqueue cpumask: online intersect > possible"
           r"|WARNING: [Tt]he mand mount option|WARNING: Unsupported flag value\(s\) of 0x%x in DT_FLAGS_1"
           r"|WARNING: Unprivileged eBPF is enabled with eIBRS|WARNING: fbcon: Driver '.*' missed to adjust"
           r"|WARNING: See https.* for mitigation options\.|WARNING: kernel not compiled with CPU_SRSO"
           r"|EXT4-[Ff][Ss](?: \(.*\))?:|(?i:warning: .* uses (?:deprecated v2 capabilities|wireless extensions))"
           r"|XFS \(\w+\): WARNING"),
    ),
    Header(
        "INFO:",
        "info",
        (
            # Lockdep's reports before 4.14 were bracketed: "[ INFO: possible ... detected ]".
            R(r"INFO: possible circular locking dependency detected", "possible deadlock in {1}",
              r"INFO: possible circular locking dependency detected \](?:.*\n)+?.*is trying to acquire lock"
              r"(?:.*\n)+?.*at: @PC@ +@FN@"),
            R(r"INFO: possible irq lock inversion dependency detected", "possible deadlock in {1}",
              r"INFO: possible irq lock inversion dependency detected \](?:.*\n)+?.*just changed the state of lock"
              r"(?:.*\n)+?.*at: @PC@ +@FN@"),
            R(r"INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected", "possible deadlock in {1}",
              r"INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected \](?:.*\n)+?.*is trying to acquire"
              r"(?:.*\n)+?.*at: @PC@ +@FN@"),
            R(r"INFO: possible recursive locking detected", "possible deadlock in {1}",
              r"INFO: possible recursive locking detected \](?:.*\n)+?.*is trying to acquire lock"
              r"(?:.*\n)+?.*at: @PC@ +@FN@"),
            R(r"INFO: inconsistent lock state", "inconsistent lock state in {1}",
              r"INFO: inconsistent lock state \](?:.*\n)+?.*takes(?:.*\n)+?.*at: @PC@ +@FN@"),
            R(r"INFO: rcu_(?:preempt|sched|bh|tasks) (?:self-)?detected(?: expedited)? stall",
              "INFO: rcu detected stall in {1}", kind="rcu_stall",
              stack=Stack((rx(r"apic_timer_interrupt"), RIP, TRACE), ("apic_timer_interrupt", "rcu"),
                          fallback=(rx(r"apic_timer_interrupt|Exception stack|el1h_64_irq"), TRACE),
                          pick=stall_frame)),
            R(r"INFO: trying to register non-static key", "INFO: trying to register non-static key in {1}",
              stack=_trace("stack", "lock", "IRQ")),
            R(r"INFO: suspicious RCU usage", "INFO: suspicious RCU usage in {2}",
              r"INFO: suspicious RCU usage(?:.*\n)+?.*?@SRC@", stack=_trace("rcu", "kmem", "slab")),
            R(r"INFO: task @TASK@ blocked (?:in I/O wait )?for more than [0-9]+ seconds", "INFO: task hung in {1}",
              stack=_trace(pick=hang_frame), kind="hung_task"),
            R(r"INFO: task @TASK@ can't die for more than .* seconds", "INFO: task can't die in {1}",
              stack=_trace("schedule"), kind="hung_task"),
            # What is left of an old KASAN report whose header was lost.
            R(r"INFO: (Freed|Allocated) in (.*)", "INFO: {1} in {2}", corrupted=True),
            R(r"INFO:" + _EMPTY, "INFO: corrupted", corrupted=True),
        ),
        rx(r"INFO: lockdep is turned off|INFO: Stall ended before state dump start|INFO: NMI handler"
           r"|INFO: recovery required on readonly filesystem|(?:handler|interrupt).*took too long"
           r"|INFO: sys_.* is not present in /proc/kallsyms|INFO: no syscalls can create resource"
           r"|rmt_storage:INFO:|_INFO:"),
        ((rx(r"INFO: task .* (?:blocked|can't die)"), "hung_task"), (rx(r"INFO: rcu_\w+ .*stall"), "rcu_stall"),
         (rx(r"lock|RCU"), "warning")),
    ),
    Header(
        "Unable to handle kernel",
        "oops",
        (
            R(r"Unable to handle kernel (paging request|NULL pointer dereference|access to user memory)",
              "BUG: unable to handle kernel {1} in {2}", stack=_rip_trace()),
        ),
    ),
    Header(
        "general protection fault",
        "oops",
        (R(r"general protection fault.*:", "general protection fault in {1}", stack=_rip_trace()),),
        rx(r"general protection fault .* error:\d+ in "),  # a user-space process's, reported by the kernel
    ),
    Header("stack segment: ", "oops", (R(r"stack segment: ", "stack segment fault in {1}", stack=_rip_trace()),)),
    Header(
        "Kernel panic",
        "panic",
        (
            # The kernel may fail to name the function or unwind the stack of a corrupted stack.
            R(r"Kernel panic - not syncing: stack-protector:", "kernel panic: stack is corrupted in {1}",
              r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: @FN@", needs_trace=False),
            R(r"Kernel panic - not syncing: stack-protector:", "kernel panic: stack is corrupted in {1}",
              r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: [a-f0-9]+",
              stack=_trace("stack_chk")),
            R(r"Kernel panic - not syncing: corrupted stack end", "kernel panic: corrupted stack end in {1}",
              r"Kernel panic - not syncing: corrupted stack end detected inside scheduler",
              stack=_trace("schedule", "retint_kernel", pick=stall_frame)),
            R(r"Kernel panic - not syncing: kernel stack overflow", "kernel stack overflow in {1}",
              stack=_trace("bad_stack", pick=stall_frame)),
            R(r"Kernel panic - not syncing: Attempted to kill init!", "kernel panic: Attempted to kill init!"),
            R(r"Kernel panic - not syncing: Couldn't open N_TTY ldisc for [^ ]+ --- error -[0-9]+",
              "kernel panic: Couldn't open N_TTY ldisc"),
            # These follow another report (an oops, a WARNING with panic_on_warn, a hung task): seen
            # first, they mean the report itself was lost.
            R(r"Kernel panic - not syncing: Fatal exception", "kernel panic: Fatal exception", corrupted=True),
            R(r"Kernel panic - not syncing: panic_on_warn set", "kernel panic: panic_on_warn set", corrupted=True),
            R(r"Kernel panic - not syncing: hung_task: blocked tasks", "kernel panic: hung_task: blocked tasks",
              corrupted=True),
            R(r"Kernel panic - not syncing: (.*)", "kernel panic: {1}"),
        ),
    ),
    Header("PANIC: double fault", "oops", (R(r"PANIC: double fault", "PANIC: double fault in {1}",
                                             stack=Stack((RIP,))),)),
    Header("rust_kernel: panicked", "panic", (R(r"rust_kernel: panicked", "{1} in {2}",
                                                r"rust_kernel: panicked at [^\n]*?\n(.+?)\n",
                                                stack=_trace(r"__rustc::rust_begin_unwind")),)),
    Header(
        "kernel BUG",
        "bug",
        (
            R(r"kernel BUG at mm/usercopy.c", "BUG: bad usercopy in {1}", stack=_trace("usercopy", "__check")),
            R(r"kernel BUG at lib/list_debug.c", "BUG: corrupted list in {1}", stack=_trace()),
            # skb helpers BUG_ON their arguments: the bug is in the caller.
            R(r"kernel BUG at (.*)", "kernel BUG in {2}", stack=_rip_trace("^skb_")),
        ),
    ),
    Header("Kernel BUG", "bug", (R(r"Kernel BUG (.*)", "kernel BUG {1}"),)),
    Header("BUG kmalloc-", "bug", (R(r"BUG kmalloc-.*: Object already free", "BUG: Object already free"),)),
    Header("divide error:", "oops", (R(r"divide error: ", "divide error in {1}", stack=Stack((RIP,))),)),
    Header("divide_error:", "oops", (R(r"divide_error: ", "divide error in {1}", stack=Stack((RIP,))),)),
    Header("invalid opcode:", "oops", (R(r"invalid opcode: ", "invalid opcode in {1}", stack=Stack((RIP,))),)),
    Header("int3:", "oops", (R(r"int3: ", "int3 in {1}", stack=_rip_trace()),)),
    Header(
        "UBSAN:",
        "ubsan",
        (
            R(r"UBSAN:", "UBSAN: undefined-behaviour in {1}", r"UBSAN: Undefined behaviour in",
              stack=_trace("ubsan", "overflow")),
            R(r"UBSAN: array-index-out-of-bounds in", "UBSAN: array-index-out-of-bounds in {1}",
              stack=_trace("ubsan", "overflow")),
            R(r"UBSAN:", "UBSAN: {1} in {2}", r"UBSAN: (.*?) in", stack=_trace("ubsan", "overflow")),
        ),
    ),
    Header("Booting the kernel.", "reboot", (R(r"^Booting the kernel", "unexpected kernel reboot",
                                                needs_trace=False),),
           rx(r"Parsing ELF|Decompressing Linux|Unknown parameter '")),
    Header("unregister_netdevice: waiting for", "hung_task",
           (R(r"unregister_netdevice: waiting for (?:.*) to become free",
              "unregister_netdevice: waiting for DEV to become free", needs_trace=False),)),
    Header("VFS: Close: file count is 0", "bug", (R(r"VFS: Close: file count is 0",
                                                    "VFS: Close: file count is zero (use-after-free)",
                                                    needs_trace=False),)),
    Header("VFS: Busy inodes after unmount", "bug", (R(r"VFS: Busy inodes after unmount",
                                                       "VFS: Busy inodes after unmount (use-after-free)",
                                                       needs_trace=False),)),
    Header("Internal error:", "oops", (R(r"Internal error:", "Internal error in {1}", stack=_rip_trace()),)),
    Header("Unhandled fault:", "oops", (R(r"Unhandled fault:", "Unhandled fault in {1}", stack=_rip_trace()),)),
    Header("Alignment trap:", "oops", (R(r"Alignment trap:", "Alignment trap in {1}", stack=_rip_trace()),)),
    Header(
        "trusty: panic",
        "panic",
        (
            R(r"trusty: panic.* ASSERT FAILED", "trusty: ASSERT FAILED: {1}",
              r"trusty: panic \(.*?\):(?: DEBUG)? ASSERT FAILED at \(.*?\): (.+)", needs_trace=False),
            R(r"trusty: panic.* ASSERT FAILED.*: *(.*)", "trusty: ASSERT FAILED: {1}", corrupted=True),
            R(r"trusty: panic", "trusty: panic: {1}", r"trusty: panic \(.*?\): (.+)", needs_trace=False),
        ),
    ),
)  # fmt: skip

# One object in /sys/kernel/debug/kmemleak (also printed on the console by kmemleak's verbose mode).
KMEMLEAK = Header(
    "unreferenced object 0x",
    "kmemleak",
    (
        R(r"unreferenced object 0x", "memory leak in {1}",
          stack=Stack((rx(r"backtrace(?: \(crc [0-9a-fA-F]*\))?:"), TRACE), (
              "kmemleak", "mmap", "kmem", "slab", "alloc", "create_object", "idr_get", "list_lru_init",
              "kasprintf", "kvasprintf", "pcpu_create", "strdup", "strndup", "memdup"))),
    ),
)  # fmt: skip
ALL_HEADERS = (*HEADERS, KMEMLEAK)

# Headers that may appear inside another report without starting a new one.
CONTINUES_REPORT = ("invalid opcode: 0000", "Kernel panic - not syncing", "unregister_netdevice: waiting for",
                    "PANIC: double fault", "Internal error:")  # fmt: skip


_ANY_NEEDLE = re.compile("|".join(re.escape(h.needle) for h in ALL_HEADERS))


def header_of(line: str) -> Header | None:
    if _ANY_NEEDLE.search(line) is None:
        return None  # most lines
    for header in ALL_HEADERS:
        if header.needle in line and not (header.not_a_report and header.not_a_report.search(line)):
            return header
    return None


# ---- frames ----------------------------------------------------------------------------------


@cache
def _skip_pattern(extra: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join([*_HELPER_FRAMES, *extra]))


def _captured(m: re.Match[str], skip: re.Pattern[str]) -> list[str]:
    return [name for name in m.groups() if name and not skip.search(name)]


_ANY_STACK_START = re.compile("|".join(f"(?:{p.pattern})" for p in STACK_STARTS))


def _is_stack_start(line: str) -> bool:
    return _ANY_STACK_START.search(line) is not None


def _walk(steps: Sequence[re.Pattern[str] | None], lines: list[str], stack: Stack) -> tuple[list[str], bool]:
    skip = _skip_pattern(stack.skip)
    found: list[str] = []  # one guilty frame per trace read
    frames: list[str] = []
    ok = True
    traces = 0
    at = 0
    step = 0
    while True:
        if step == len(steps) or (steps[step] is TRACE and traces > 0):
            names = [canonical_frame(f) for f in frames]
            guilty = (stack.pick(names) if stack.pick else names[0]) if names else ""
            if not guilty:
                guilty, ok = "corrupted", False
            found.append(guilty)
            frames = []
        if step == len(steps):
            return found, ok
        pattern = steps[step]
        if pattern is TRACE:
            traces += 1
            following = steps[step + 1] if step + 1 < len(steps) else None
            while at < len(lines):
                line = lines[at]
                at += 1
                if "should_fail" in line and INJECTED.search(line):
                    ok = False
                    break
                if _is_stack_start(line):
                    break
                if following is not None and (m := following.search(line)):
                    frames += _captured(m, skip)
                    step += 1
                    break
                if m := _ANY_FRAME.search(line):
                    frames += _captured(m, skip)
        else:
            while at < len(lines):
                line = lines[at]
                at += 1
                if "should_fail" in line and INJECTED.search(line):
                    ok = False
                    break
                if m := pattern.search(line):
                    frames += _captured(m, skip)
                    break
        step += 1


def guilty_frames(stack: Stack, text: str) -> tuple[list[str], bool]:
    lines = text.split("\n")
    found, ok = _walk(stack.steps, lines, stack)
    if ok or not stack.fallback:
        return found, ok
    return _walk(stack.fallback, lines, stack)


# ---- the title -------------------------------------------------------------------------------

_REWRITES = [
    (re.compile(p, re.ASCII), r)
    for p, r in (
        (r"syz-executor\.?[0-9]+(?:[/:][0-9]+)?", "syz-executor"),  # the fuzzer's process ids
        (r"syzkaller[0-9]+(?:[/:][0-9]+)?", "syzkaller"),
        (r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}", r"\1ADDR"),  # anything like an address
        (r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", "IP"),
        (r"(\.\w+)(?::[0-9]+)+", r"\1:LINE"),  # file.c:123
        (r"([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+", r"\1"),  # f+0x12/0x40 -> f
        (r"CPU#[0-9]+", "CPU"),
        (r"(\W)[0-9]+(\W|$)", r"\1NUM\2"),  # numbers left over (not inside names like nl80211)
        (r"[0-9]{7,}", "NUM"),
    )
]
MAX_TITLE = 120  # intermixed lines can make a header very long


def stable_title(title: str) -> str:
    """The title without what changes between runs, printable, one space between words."""
    for pattern, replacement in _REWRITES:
        while True:
            new = pattern.sub(replacement, title)
            if new == title:
                break
            title = new
    out = []
    prev = " "
    for byte in title.encode()[:MAX_TITLE]:
        ch = " " if byte == 9 else chr(byte)
        if (byte < 0x20 and byte != 9) or byte >= 0x7F:
            continue
        if ch == " " and prev == " ":
            continue
        out.append(ch)
        prev = ch
    return "".join(out).strip()


@dataclass
class Titled:
    title: str
    corrupted: bool
    reason: str = ""
    kind: str = ""


_STAMP_IN_TITLE = re.compile(r"\[ *[0-9]+\.[0-9]+\]")


def _missing_stack(text: str) -> str:
    """Why a report that should carry a stack trace does not (empty: it does)."""
    seen_frame = False
    for start in ALL_STACK_STARTS:
        m = start.search(text)
        if m is None:
            continue
        after = text[m.start() :].split("\n")
        if len(after) < 4:
            return "call trace is missed"
        missing = True
        for line in after[1:16]:
            if _is_stack_start(line):
                break
            if "(stack is not available)" in line or _ANY_FRAME.search(line):
                seen_frame, missing = True, False
                break
        if missing and start is not RISCV_STACK:
            return "no frames in a stack trace"
    if not seen_frame and ARM_FROM.search(text):
        seen_frame = True  # arm's headless "f from g+0x.." stack
    return "" if seen_frame else "no stack trace in report"


def title_for(header: Header, lines: Sequence[str], whole: Sequence[str] | None = None) -> Titled:
    """Title a report: `lines` from its header line on; `whole` (default: lines) for the corruption check."""
    text = "".join(line + "\n" for line in lines)
    chosen: Rule | None = None
    title = ""
    reason = ""
    best = -1
    for rule in header.rules:
        m = rule.title.search(text)
        if m is None or (best != -1 and (m.start() > best or (m.start() == best and title))):
            continue
        if best == -1 or m.start() < best:
            best, title, chosen = m.start(), "", None
        if rule.report is not None:
            m = rule.report.search(text)
            if m is None:
                continue
        args = [g or "" for g in m.groups()]
        reason = ""
        if rule.stack is not None:
            frames, ok = guilty_frames(rule.stack, text[m.start() :])
            args += frames
            if not ok:
                reason = "extracted no frames"
        title = rule.fmt.format("", *args)
        chosen = rule
    if not title:
        if best != -1:
            reason = "matched title but not report regexp"
        pos = text.find(header.needle)
        title = text[pos:].split("\n", 1)[0] if pos != -1 else (lines[0] if lines else "")
    if not reason and chosen is not None and chosen.corrupted:
        reason = "report format is marked as corrupted"
    if not reason:
        if _STAMP_IN_TITLE.search(title):
            reason = "title matches corrupted regexp"
        elif chosen is not None and chosen.needs_trace:
            full = text if whole is None else "".join(line + "\n" for line in whole)
            reason = _missing_stack(full)
    kind = (chosen.kind if chosen is not None and chosen.kind else "") or header.kind_of(lines[0] if lines else "")
    return Titled(stable_title(title), bool(reason), reason, kind)
