"""Snapshot boot: a guest booted once to its ready point, saved, and restored by later runs.

What is saved is a *base* guest: the target's kernel booted from an initramfs with busybox and
the harness's /init only, no driver and no cma_test. Booted guests are all the same up to that
point, so a snapshot is keyed by everything that shapes it (the kernel image, the base
initramfs, the device tree, QEMU's argv and version, the format below) and never by the code
under test. The driver and cma_test of the current build reach the guest after every restore
on a small read-only virtio disk (a cpio archive, `-drive ...,file=PAYLOAD`): disk contents are
not part of the migration stream, so the same snapshot serves every build of the driver, and the
guest checks what it unpacked against the host's md5 sums, so an edited driver never runs
against a stale one. (QEMU's fw_cfg files, the obvious other channel, are read by Linux one
MMIO byte at a time with the offset skipped byte by byte on every 4 KiB read: over a minute
for cma_test.)

Saving uses QEMU's own migration, driven over QMP (`migrate` to a file descriptor passed with
`getfd`), while the guest runs: the stream then restores into a running guest
(`-incoming exec:cat FILE`). The base boot's console transcript (kernel lines and the /init's
`@@boot` facts, up to `@@ready`) is saved with it and replayed into the restored run's console,
so console.log, the kernel log and the boot facts read exactly as after a cold boot; the
kernel's own ring buffer (dmesg) is in the restored memory.

Snapshots need a kernel with virtio-mmio and virtio-blk (Debian's kernels have both as
modules, which the base initramfs loads before the ready point and the delivery unloads again,
leaving the guest as a cold boot leaves it) and the serial transport; otherwise the run boots,
and says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness.artifacts import initramfs
from harness.artifacts.cachelock import entry_lock, write_atomic
from harness.config.targets import Target
from harness.errors import GuestError
from harness.guest import guestinit
from harness.guest.qemu import BootFiles, qemu_command

# Bumped when what a snapshot holds or how it is restored changes: older snapshots are ignored.
FORMAT_VERSION = "1"
PAYLOAD_DEVICE = "/dev/vda"  # the only virtio disk
# Kernel modules the disk needs where the kernel builds them as modules, in load order
# (CONFIG option, path under lib/modules/<release>).
BLK_MODULES = (
    ("CONFIG_VIRTIO", "kernel/drivers/virtio/virtio.ko"),
    ("CONFIG_VIRTIO_RING", "kernel/drivers/virtio/virtio_ring.ko"),
    ("CONFIG_VIRTIO_MMIO", "kernel/drivers/virtio/virtio_mmio.ko"),
    ("CONFIG_VIRTIO_BLK", "kernel/drivers/block/virtio_blk.ko"),
)
# The guest sized the disk when the snapshot was made: every payload has this size (the archive,
# then zeros: sparse on the host). The archive starts with a file of zeros that covers where a
# partition table would be (MBR signature at 510, GPT header at 512), so none is ever seen.
PAYLOAD_SIZE = 8 << 20
PAD_FILE = "tmp/.cma-harness-payload-pad"
PAD_BYTES = 4096
STATE = "state"  # the migration stream
CONSOLE = "boot-console.txt"  # the base boot's console, up to @@ready
META = "meta.json"
# Where the driver and cma_test land in the guest (the same paths as in the full initramfs).
PAYLOAD_FILES = {"bin/cma_test": 0o755, "lib/modules/cma_mem.ko": 0o644}


def disk_args(payload: Path) -> list[str]:
    file = str(payload).replace(",", ",,")  # QEMU's option syntax: a comma in a value is doubled
    return [
        "-drive", f"if=none,id=payload,format=raw,readonly=on,file={file}",
        "-device", "virtio-blk-device,drive=payload",
    ]  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """A snapshot of a target's base guest (`dir` may not exist yet), and this run's payload."""

    key: str
    dir: Path
    base: BootFiles  # the kernel and the base initramfs the snapshot was (or will be) booted from
    payload: Path  # this build's cma_test and driver, offered to the guest as a read-only disk
    payload_md5: dict[str, str]  # guest path -> md5 of what the guest must find there
    material: str = ""  # what the key is the hash of (JSON), kept in the snapshot's meta.json
    blk_modules: tuple[str, ...] = ()  # module names the base image loads (unloaded after delivery)

    @property
    def state(self) -> Path:
        return self.dir / STATE

    def exists(self) -> bool:
        return (self.dir / STATE).is_file() and (self.dir / CONSOLE).is_file()

    def disk_args(self) -> list[str]:
        return disk_args(self.payload)

    def restore_args(self) -> list[str]:
        return [*self.disk_args(), "-incoming", f"exec:cat {shlex.quote(str(self.state))}"]

    def transcript(self) -> list[str]:
        return (self.dir / CONSOLE).read_text().splitlines()

    def deliver_command(self) -> str:
        """Unpack the payload (past the page cache: the disk was another file when the snapshot was
        made), print the md5 of what landed, unload the disk's modules (a cold boot has none)."""
        files = " ".join(f"/{p}" for p in PAYLOAD_FILES)
        unload = f"rmmod {' '.join(reversed(self.blk_modules))}; " if self.blk_modules else ""
        return (
            f"cd / && blockdev --flushbufs {PAYLOAD_DEVICE} && cpio -idu <{PAYLOAD_DEVICE} 2>/dev/null && "
            f"md5sum {files}; rc=$?; {unload}exit $rc"
        )

    def check_delivery(self, stdout: str) -> str:
        """'' if the guest holds exactly this build's files, else what is wrong."""
        found = {}
        for line in stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                found[parts[1].lstrip("/")] = parts[0]
        wrong = [p for p, md5 in self.payload_md5.items() if found.get(p) != md5]
        return f"the guest's copy of {', '.join(wrong)} differs from this build's" if wrong else ""


def base_init_script(modules: list[str]) -> str:
    extra = "".join(f"insmod /lib/modules/{m}.ko || echo '@@boot snapshot-error insmod {m}'\n" for m in modules)
    # The kernel log's boot facts are printed before the ready point here: replayed with the boot,
    # a restored guest has them without a command.
    return guestinit.init_script(extra, ready=guestinit.BASE_READY_MARKER, facts_at_boot=True)


def _memo_digest(cache: Path, path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime): a kernel image is hashed once."""
    st = path.stat()
    ident = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache / "snapshots" / "sums" / ident
    with contextlib.suppress(OSError):
        return memo.read_text().strip()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    write_atomic(memo, digest.encode())
    return digest


def _qemu_identity(cache: Path, binary: str) -> str:
    """QEMU's version line, remembered by the binary's identity (running it costs ~30 ms)."""
    import subprocess

    found = shutil.which(binary)
    if found is None:
        return binary
    st = Path(found).stat()
    ident = hashlib.sha256(f"{Path(found).resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache / "snapshots" / "qemu" / ident
    with contextlib.suppress(OSError):
        return memo.read_text().strip()
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    version = out.splitlines()[0] if out else "unknown"
    write_atomic(memo, version.encode())
    return version


def disk_support(kconfig: Path, modules: Path | None) -> tuple[list[Path], str]:
    """(modules to load, '') when the kernel can read the payload disk; else ([], why)."""
    try:
        text = kconfig.read_text(errors="replace")
    except OSError:
        return [], f"the kernel's .config ({kconfig}) is not there to tell whether it has virtio-blk"
    load = []
    for option, rel in BLK_MODULES:
        if f"\n{option}=y" in text:
            continue
        if f"\n{option}=m" not in text or modules is None:
            if option == "CONFIG_VIRTIO_RING":
                continue  # not a separate option in every kernel: part of CONFIG_VIRTIO
            return [], f"the kernel has no {option} (the snapshot's payload disk needs virtio-mmio and virtio-blk)"
        module = modules / rel
        if not module.is_file():
            return [], f"the kernel builds {option} as a module, but {module} is not there"
        load.append(module)
    return load, ""


def plan(
    cache: Path,
    target: Target,
    kernel: Path,
    dtb: Path | None,
    busybox: Path,
    cma_test: Path,
    kmod: Path,
    blk_modules: list[Path],
) -> Snapshot:
    """The snapshot for this target and these files (made on first use), and this run's payload."""
    base_files = initramfs.GuestFiles(busybox=busybox, cma_test=None, kmod=None, extra_modules=tuple(blk_modules))
    loads = [m.stem for m in blk_modules]
    base_initrd = initramfs.cached_initramfs(cache, base_files, base_init_script(loads), guestinit.FORMAT_VERSION)
    base = BootFiles(kernel, base_initrd, dtb, module=kmod)
    payload, md5 = cached_payload(cache, cma_test, kmod)
    # The key: QEMU's argv with every file named by its content, QEMU's version, the format.
    names = {str(kernel): _memo_digest(cache, kernel), str(base_initrd): base_initrd.stem}
    if dtb is not None:
        names[str(dtb)] = _memo_digest(cache, dtb)
    argv = [names.get(arg, arg) for arg in qemu_command(target, base)]
    argv += disk_args(Path(f"<payload of {PAYLOAD_SIZE} bytes>"))  # the payload changes; its size does not
    material = json.dumps(
        {"format": FORMAT_VERSION, "argv": argv, "qemu": _qemu_identity(cache, target.qemu.binary)}, sort_keys=True
    )
    key = hashlib.sha256(material.encode()).hexdigest()[:20]
    return Snapshot(key, cache / "snapshots" / f"{target.name}-{key}", base, payload, md5, material, tuple(loads))


def cached_payload(cache: Path, cma_test: Path, kmod: Path) -> tuple[Path, dict[str, str]]:
    """The payload disk: a newc archive of a pad, cma_test and the driver, zeros up to PAYLOAD_SIZE."""
    contents = {"bin/cma_test": cma_test.read_bytes(), "lib/modules/cma_mem.ko": kmod.read_bytes()}
    md5 = {p: hashlib.md5(data).hexdigest() for p, data in contents.items()}  # what the guest's md5sum prints
    layout = {"format": FORMAT_VERSION, "pad": PAD_BYTES, "size": PAYLOAD_SIZE}
    digest = hashlib.sha256(json.dumps(md5 | layout, sort_keys=True).encode()).hexdigest()[:20]
    out = cache / "snapshots" / "payloads" / f"{digest}.cpio"
    if not out.exists():
        entries = [initramfs.Entry(PAD_FILE, 0o100644, bytes(PAD_BYTES))]
        entries += [initramfs.Entry(p, 0o100000 | PAYLOAD_FILES[p], data) for p, data in contents.items()]
        blob = initramfs.encode_newc(entries)
        if len(blob) > PAYLOAD_SIZE:
            raise GuestError(f"cma_test and the driver ({len(blob)} bytes) do not fit the {PAYLOAD_SIZE}-byte payload")
        with entry_lock(out, what="writing the snapshot payload"):
            if not out.exists():
                write_atomic(out, blob + bytes(PAYLOAD_SIZE - len(blob)))
    return out, md5


def save(snap: Snapshot, qmp_socket: Path, transcript: list[str], timeout: float) -> float:
    """Save the running guest behind qmp_socket as snap and let it run on; returns the seconds
    it took. Published by an atomic rename under the cache's lock: a snapshot another run
    saved meanwhile is kept, and a reader sees a whole snapshot or none."""
    from harness.guest.qmp import Qmp, QmpError

    started = time.monotonic()
    with entry_lock(snap.dir, what="saving the guest snapshot"):
        if snap.exists():
            return 0.0
        staging = snap.dir.with_name(f".{snap.dir.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with Qmp(qmp_socket, timeout) as qmp:
                qmp.command("migrate-set-parameters", {"max-bandwidth": 1 << 40})
                fd = os.open(staging / STATE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    qmp.command("getfd", {"fdname": "snapshot"}, fds=[fd])
                finally:
                    os.close(fd)
                qmp.command("migrate", {"uri": "fd:snapshot"})
                deadline = time.monotonic() + timeout
                while True:
                    status = qmp.command("query-migrate").get("status", "")
                    if status == "completed":
                        break
                    if status in ("failed", "cancelled") or time.monotonic() > deadline:
                        raise QmpError(f"saving the guest's state: migration {status or 'timed out'}")
                    time.sleep(0.02)
                qmp.command("cont")  # a guest migrated while running stops afterwards: go on
            (staging / CONSOLE).write_text("".join(line + "\n" for line in transcript))
            meta = json.loads(snap.material or "{}") | {"saved": time.time()}
            (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
            shutil.rmtree(snap.dir, ignore_errors=True)  # an incomplete one (no state or console)
            os.rename(staging, snap.dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return time.monotonic() - started


# Snapshots kept per target, the most recently used: someone switching between two kernels keeps
# both warm, and the older ones (~70 MB each for the Debian kernel) go when a new one is saved.
KEEP_PER_TARGET = 3
KEEP_PAYLOADS = 8  # 8 MiB files (sparse), one per build of the driver and cma_test
# Never one used in the last ten minutes: another run may be about to restore it.
IN_USE_S = 600.0


def mark_used(snap: Snapshot) -> None:
    """A restore counts as a use: pruning keeps the most recently used."""
    for path in (snap.dir / META, snap.payload):
        with contextlib.suppress(OSError):
            os.utime(path)


def stale(entries: dict[str, float], keep: int, now: float, in_use: float = IN_USE_S) -> list[str]:
    """Of {name: last use}, those beyond the `keep` most recent and unused for `in_use` seconds."""
    newest = sorted(entries, key=lambda n: (-entries[n], n))
    return sorted(n for n in newest[keep:] if now - entries[n] > in_use)


def prune(snap: Snapshot, now: float | None = None) -> list[Path]:
    """After saving `snap`: remove its target's stale snapshots and stale payloads; returns what
    went. An entry another process holds (saving, or pruning too) is left for next time."""
    now = time.time() if now is None else now
    root = snap.dir.parent
    target = snap.dir.name[: -len(snap.key) - 1]
    mine: dict[str, float] = {}
    for d in root.glob(f"{target}-*"):
        if d.is_dir() and d.name[len(target) + 1 :].isalnum() and len(d.name) == len(snap.dir.name):
            with contextlib.suppress(OSError):
                mine[d.name] = max(d.stat().st_mtime, (d / META).stat().st_mtime if (d / META).exists() else 0.0)
    payloads = {}
    for f in (root / "payloads").glob("*.cpio"):
        with contextlib.suppress(OSError):
            payloads[f.name] = f.stat().st_mtime
    gone = [root / n for n in stale(mine, KEEP_PER_TARGET, now) if n != snap.dir.name]
    gone += [root / "payloads" / n for n in stale(payloads, KEEP_PAYLOADS, now) if n != snap.payload.name]
    removed = []
    for path in gone:
        if try_remove(path):
            removed.append(path)
    return removed


def try_remove(entry: Path) -> bool:
    """Remove a cache entry under its lock, unless another process holds the lock."""
    import fcntl

    lock = entry.with_name(entry.name + ".lock")
    try:
        f = lock.open("w")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        with contextlib.suppress(OSError):
            lock.unlink()  # held: a process that opens it afterwards makes a new one
    return not entry.exists()


def discard(snap: Snapshot) -> None:
    """Remove a snapshot that would not restore (it is made again on the next run)."""
    shutil.rmtree(snap.dir, ignore_errors=True)
