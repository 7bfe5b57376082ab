"""The guest's /init and the guest half of the serial command protocol.

Protocol (one round trip per command). The host writes one line:

    __h ID 'shell command'

The guest runs the command in a subshell with stdin from /dev/null,
stdout and stderr captured to files, then prints:

    @@ID B
    @IDo|<each stdout line, with '\\' and '[' escaped as '\\\\' and '\\x5b'>
    @IDe|<each stderr line, escaped alike>
    @@ID X <exit status> <md5 of stdout> <md5 of stderr>

The kernel prints on the same console at any moment, even in the middle
of a line. The host rebuilds stdout/stderr from the framed lines and checks
them against the md5 sums; on a mismatch it asks for the same output again
(`__e ID`), which costs a second round trip only when a kernel message
actually landed inside the output.

A short first reply (up to FAST_BYTES a stream, framed by shell builtins) is
proved without an md5sum process: its sum field is `c<bytes>:<lines>`, the
bytes the command wrote (the shared file offset of the shell's fd, read from
/proc/1/fdinfo) and the framed lines. The guest sends it only when what its
builtins read back adds up to those bytes (the builtin `read` drops NUL
bytes: such a reply is proved by md5sum instead) and holds no carriage
return (which the host's console drops). The host accepts it only when
the rebuilt text has exactly those bytes and lines and no other non-empty
line arrived between `@@ID B` and `@@ID X`: kernel bytes inside a framed
line either push the rest of that line onto an unframed line or change the
byte count, so a counted reply cannot come back changed either.

Before the first command, /init prints `@@boot release=... uptime=...` and
`@@ready`; the kernel log's facts are asked for later (BOOT_FACTS_COMMAND
in harness/guest/shell.py) or printed by `__bf`.

For a command whose output is big the host writes `__hz ID 'command'`
instead: stdout then comes as base64 lines of its gzip stream, unprefixed,
and the stdout field of the X line says `gzip` (gzip's CRC proves it;
re-asked with `__z ID`).

The console loglevel is raised to 8 once booted: every kernel message,
including the driver's dump_mem records, then reaches the host on the
console as it happens, which is what the live fault detector reads.
"""

from __future__ import annotations

import hashlib

# Bumped when the script's protocol changes, so cached initramfs archives are rebuilt.
FORMAT_VERSION = "10"

READY_MARKER = "@@ready"
# console_loglevel once booted: every message (the driver's dump_mem lines included) reaches the
# console, where the live fault detector reads it.
CONSOLE_LOGLEVEL = 8
# What a snapshot's base image prints at its ready point instead (harness/guest/snapshot.py):
# "@@ready" then appears only once the restored guest has this build's driver and cma_test,
# so in console.log it means the same thing, booted or restored.
BASE_READY_MARKER = "@@base-ready"
BOOT_PREFIX = "@@boot "
# Replies up to this many bytes per stream are framed by shell builtins instead of sed.
FAST_BYTES = 256

INIT_TEMPLATE = r"""#!/bin/sh
# cma-harness guest init: mount, report boot facts, then run host commands.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
# The applet links come in the archive (harness/artifacts/initramfs.py), unless the busybox
# binary's table of names was not found: a test builtin, no process, decides.
[ -e /bin/ls ] || /bin/busybox --install -s
# Every process costs 5-25 ms under TCG before the ready point (exec of a 2 MB static busybox),
# so the mounts are one `mount -a` and the boot facts two processes.
echo "proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
devtmpfs /dev devtmpfs defaults 0 0
debugfs /sys/kernel/debug debugfs defaults 0 0
tmpfs /tmp tmpfs defaults 0 0
tmpfs /run tmpfs defaults 0 0" >/etc/fstab
mount -a 2>/dev/null
# No tty echo: the console then carries only what the guest prints, and a typed
# command can never look like a kernel message.
stty -echo 2>/dev/null
echo @LOGLEVEL@ > /proc/sys/kernel/printk
# A task stuck in D state (a driver deadlock) is reported after 10 s instead of 120 s.
echo 10 > /proc/sys/kernel/hung_task_timeout_secs 2>/dev/null

# __p PREFIX FILE: FILE with PREFIX before every line, '\' and '[' escaped (framed output
# then never contains a printk timestamp). The trailing echo ends a last line that had no
# newline; the empty line it may add is unframed and ignored by the host.
# With __q set (a first answer, not one asked for again), a reply of up to @FAST_BYTES@ bytes
# goes out by shell builtins: a sed process costs ~8 ms on the Debian kernel under TCG and
# 50-100 ms on the debug kernel (KASAN, lockdep), but the builtin `read` takes one syscall a
# byte (0.03 ms and 0.18 ms there), so only short replies (most are a record or two) gain.
# What the builtins cannot carry (a NUL byte: `read` drops it) leaves the count short of the
# bytes written, so that reply is proved by md5sum, which fails, and the host's second request
# (__e/__z) uses sed.
# __p PREFIX FILE FD sets __c: the reply's proof when it needs no md5sum process (the empty
# sum for an empty file, c<bytes>:<lines> for a counted builtin reply), else nothing. __m set:
# md5 sums only (a LAVA job: its log cannot be asked again, and an md5 survives a kernel line
# between two framed lines, where a count needs a clean frame).
__p() {
	__c=
	[ -s "$2" ] || { __c=@EMPTY_MD5@; return 0; }
	if [ -n "$__q" ]; then
		__n=@FAST_BYTES@ __b= __l= __o=1 __k=0 __t=0
		while [ $__n -gt 0 ] && { IFS= read -r -n $__n __l || { [ -n "$__l" ] && __t=1; }; }; do
			if [ ${#__l} -ge $__n ]; then
				__o=
				break
			fi
			# A carriage return never reaches the host (the console drops it): sed and md5sum
			# then report the reply as changed, where a count could be evened out.
			case $__l in *"@CR@"*)
				__o=
				break
				;;
			esac
			__n=$((__n - ${#__l} - 1)) __k=$((__k + 1)) __l=${__l//\\/\\\\}
			__b="$__b$1${__l//\[/\\x5b}
"
			__l=
		done <"$2"
		if [ -n "$__o" ] && [ $__n -gt 0 ]; then
			printf %s "$__b"
			# The offset is the bytes written unless the command seeks on its own stdout; one that
			# seeks back and writes exactly as many NULs as it overwrote would pass: none does.
			read -r __x __w <"/proc/$$/fdinfo/$3"
			[ -z "$__m" ] && [ $((@FAST_BYTES@ - __n - __t)) = "$__w" ] && __c="c$__w:$__k"
			return 0
		fi
	fi
	sed -e 's/\\/\\\\/g' -e 's/\[/\\x5b/g' -e "s/^/$1/" "$2"
	echo
}
# The boot facts: the release and uptime by shell builtins, before the ready point. The kernel
# log's (the CMA reservation, the checkers' banners) are the host's to ask for when a check
# first needs them, or to find in the whole log it reads at the end: at boot their two
# processes cost 45-65 ms under TCG, more than the rest of /init, and a scenario that never
# touches the driver never needs them. __bf prints them as boot lines (kernel log lines escaped
# as __p would, and the CMA lines of /proc/meminfo, by one sed reading both), for a snapshot's
# base image (replayed with its boot) and a LAVA job (its log cannot be asked again).
read -r __r </proc/sys/kernel/osrelease
read -r __u __x </proc/uptime
echo "@@boot release=$__r uptime=$__u"
# The kernel's banner, which `quiet` keeps off the console: LAVA's boot action waits for it
# ('Linux version [0-9]') before it looks for the ready marker.
read -r __v </proc/version
echo "@@boot banner $__v"
__bf() {
	dmesg | sed -n -E -e '/^Cma(Total|Free):/{s/^/@@boot meminfo /p;d}' -e '/@BOOT_FACTS@/!d' \
		-e 's/\\/\\\\/g' -e 's/\[/\\x5b/g' -e 's/^/@@boot dmesg /p' - /proc/meminfo
}
# __e ID STATUS: emit the saved output of command ID.
# A silent or short reply needs no md5sum process (measured: 6 ms a command on the Debian
# kernel, 17 ms on the debug kernel; three commands in four are short).
__e() {
	echo "@@$1 B"
	__p "@$1o|" /tmp/.o 3
	__y=$__c
	__p "@$1e|" /tmp/.e 4
	if [ -n "$__y" ] && [ -n "$__c" ]; then
		set -- "$1" "${2:-$__rc}" "$__y" - "$__c"
	else
		set -- "$1" "${2:-$__rc}" $(md5sum /tmp/.o /tmp/.e)
	fi
	echo "@@$1 X $2 $3 $5"
}
# __z ID STATUS: as __e, but stdout gzip-compressed and base64-encoded, unprefixed (base64 has
# no '[' and no space: a kernel line never passes for it). For big outputs: a fuzz round's
# records or a kernel log cross the UART 5-20 times smaller, for the same two processes; gzip's
# CRC proves the text, so its sum field says "gzip" (or is the empty sum: no stdout).
__z() {
	echo "@@$1 B"
	__s=@EMPTY_MD5@
	if [ -s /tmp/.o ]; then
		gzip -c /tmp/.o | base64
		__s=gzip
	fi
	__p "@$1e|" /tmp/.e 4
	if [ -n "$__c" ]; then
		set -- "$1" "${2:-$__rc}" "$__c"
	else
		set -- "$1" "${2:-$__rc}" $(md5sum /tmp/.e)
	fi
	echo "@@$1 X $2 $__s $3"
}
# __h ID COMMAND: run COMMAND in a subshell (a syntax error must not kill PID 1), then emit.
# __hz: the same, emitted by __z. Both run it by __run (given their own arguments, which the
# command sees as before): the capture files stay open on fds 3 and 4 of this shell, shared
# with the command's stdout and stderr, so their offsets count the bytes it wrote (__p's
# proof); the command itself gets neither fd.
__run() {
	exec 3>/tmp/.o 4>/tmp/.e
	( eval "$2" ) </dev/null >&3 2>&4 3>&- 4>&-
	__rc=$? __q=1
}
__h() {
	__run "$@"
	__e "$1" $__rc
	__q=
}
__hz() {
	__run "$@"
	__z "$1" $__rc
	__q=
}
@EXTRA@
echo "@READY@"
while IFS= read -r __line; do eval "$__line"; done
echo "@@console closed"
poweroff -f
"""

# /init for the bare-boot baseline: the cheapest possible guest cycle.
# It prints the guest's uptime at /init as the harness's /init does (shell builtins, no process),
# so a benchmark can take the kernel's own boot, the noisy part, out of a comparison.
BARE_INIT = """#!/bin/sh
/bin/busybox mount -t proc proc /proc
read -r __u __x </proc/uptime
echo "@@boot uptime=$__u"
echo "@@ready"
/bin/busybox poweroff -f
"""


# A shell function of /init that prints the kernel log's boot facts as `@@boot dmesg` lines
# (the LAVA job types it first; a snapshot's base image runs it before its ready point).
PRINT_BOOT_FACTS = "__bf"


def init_script(extra: str = "", ready: str = READY_MARKER, facts_at_boot: bool = False) -> str:
    """facts_at_boot: the kernel log's boot facts before the ready point (a snapshot's base image:
    they are replayed with its boot, so a restored guest never asks for them)."""
    from harness.oracles.dmesg import BOOT_FACT_PATTERN

    if facts_at_boot:
        extra = f"{PRINT_BOOT_FACTS}\n{extra}"
    return (
        INIT_TEMPLATE.replace("@BOOT_FACTS@", BOOT_FACT_PATTERN)
        .replace("@EXTRA@", extra)
        .replace("@READY@", ready)
        .replace("@EMPTY_MD5@", hashlib.md5(b"").hexdigest())
        .replace("@LOGLEVEL@", str(CONSOLE_LOGLEVEL))
        .replace("@FAST_BYTES@", str(FAST_BYTES))
        .replace("@CR@", "\r")
    )


# SSH (transport ssh): virtio-net on QEMU's user network, dropbear with a host key made at
# boot, printed on the console so the host can pin it. The client's public key arrives on
# the kernel command line (cma_harness.sshkey=TYPE:BASE64): a fresh key per run, and the
# initramfs stays the same from run to run. -s -g: no password logins at all.
SSH_INIT = r"""
for m in @MODULES@; do insmod /lib/modules/$m.ko || echo "@@boot ssh-error insmod $m failed"; done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
mkdir -p /dev/pts /etc/dropbear /root/.ssh && mount -t devpts devpts /dev/pts
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
echo 'root:*:19000:0:99999:7:::' > /etc/shadow
sed -n 's/.*cma_harness\.sshkey=\([^ ]*\).*/\1/p' /proc/cmdline | tr ':' ' ' > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
dropbearkey -t ed25519 -f /etc/dropbear/host_ed25519 >/dev/null 2>&1
echo "@@boot sshd-hostkey $(dropbearkey -y -f /etc/dropbear/host_ed25519 | grep '^ssh-' | cut -d' ' -f1,2)"
dropbear -r /etc/dropbear/host_ed25519 -s -g -p 22 || echo "@@boot ssh-error dropbear did not start"
"""


def ssh_init(modules: list[str]) -> str:
    return SSH_INIT.replace("@MODULES@", " ".join(modules))
