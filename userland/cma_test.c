// SPDX-License-Identifier: GPL-2.0
/*
 * cma_test: run steps against /dev/cma_mem and print one "@cma" record per
 * step. The CLI, the steps and the record format are specified in
 * README.md next to this file; the ABI in ../kmod/include/uapi/linux/cma_mem.h.
 *
 *   cma_test STEP...            run the steps here
 *   cma_test serve PROC         start a server that keeps its state between requests
 *   cma_test ctl PROC STEP...   run the steps inside server PROC
 *
 * Exit status: 0 every step ok, 1 some step failed, 2 usage error.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/cma_mem.h>

/* The same numbers as the driver's BUILD_BUG_ON()s: armhf and arm64 agree. */
_Static_assert(sizeof(struct cma_mem_block) == 56, "cma_mem_block size");
_Static_assert(offsetof(struct cma_mem_block, name) == 0, "name");
_Static_assert(offsetof(struct cma_mem_block, is_use_buffer) == 16, "is_use_buffer");
_Static_assert(offsetof(struct cma_mem_block, id) == 20, "id");
_Static_assert(offsetof(struct cma_mem_block, offset) == 24, "offset");
_Static_assert(offsetof(struct cma_mem_block, len) == 32, "len");
_Static_assert(offsetof(struct cma_mem_block, phy_base) == 40, "phy_base");
_Static_assert(offsetof(struct cma_mem_block, mem_base) == 48, "mem_base");
_Static_assert(sizeof(struct cma_mem_info) == 32, "cma_mem_info size");
_Static_assert(offsetof(struct cma_mem_info, cma_total) == 0, "cma_total");
_Static_assert(offsetof(struct cma_mem_info, used) == 8, "used");
_Static_assert(offsetof(struct cma_mem_info, available) == 16, "available");
_Static_assert(offsetof(struct cma_mem_info, blocks) == 24, "blocks");
_Static_assert(offsetof(struct cma_mem_info, reserved) == 28, "reserved");

#define RUN_DIR "/run/cma_test"
#define MAX_LINE (64 * 1024)
#define MAX_WORDS 4096
#define EXHAUST_MAX 1000000

/* ---- errno names ------------------------------------------------------ */

static const struct {
	int num;
	const char *name;
} errnames[] = {
#define E(x) { x, #x }
	E(EPERM), E(ENOENT), E(ESRCH), E(EINTR), E(EIO), E(ENXIO), E(E2BIG),
	E(ENOEXEC), E(EBADF), E(ECHILD), E(EAGAIN), E(ENOMEM), E(EACCES),
	E(EFAULT), E(EBUSY), E(EEXIST), E(EXDEV), E(ENODEV), E(ENOTDIR),
	E(EISDIR), E(EINVAL), E(ENFILE), E(EMFILE), E(ENOTTY), E(EFBIG),
	E(ENOSPC), E(ESPIPE), E(EROFS), E(EMLINK), E(EPIPE), E(EDOM),
	E(ERANGE), E(EDEADLK), E(ENAMETOOLONG), E(ENOSYS), E(EOVERFLOW),
	E(ENOTSOCK), E(EOPNOTSUPP), E(EADDRINUSE), E(ECONNREFUSED),
	E(ECONNRESET), E(ETIMEDOUT), E(ENOTCONN), E(EPROTO), E(ENOBUFS),
	E(ENOTSUP), E(ECANCELED), E(EOWNERDEAD),
#undef E
};

static const char *errname(int e)
{
	static char buf[16];
	size_t i;

	if (e == 0)
		return "0";
	for (i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
		if (errnames[i].num == e)
			return errnames[i].name;
	snprintf(buf, sizeof(buf), "E%d", e);
	return buf;
}

/* "ENOENT", "0" or a number; -1 if unknown. */
static int parse_errno(const char *s)
{
	size_t i;
	char *end;
	long v;

	for (i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
		if (!strcmp(errnames[i].name, s))
			return errnames[i].num;
	if (s[0] == 'E' && isdigit((unsigned char)s[1]))
		s++;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > 4095)
		return -1;
	return (int)v;
}

/* ---- numbers ---------------------------------------------------------- */

/* Decimal or 0x hex, optional K/M/G suffix (powers of 1024). */
static bool parse_u64(const char *s, uint64_t *out, bool suffix)
{
	unsigned long long v;
	uint64_t mul = 1;
	char *end;

	if (!*s || *s == '-' || isspace((unsigned char)*s))
		return false;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s)
		return false;
	if (suffix && *end) {
		switch (*end) {
		case 'k': case 'K': mul = 1ULL << 10; break;
		case 'm': case 'M': mul = 1ULL << 20; break;
		case 'g': case 'G': mul = 1ULL << 30; break;
		default: return false;
		}
		end++;
	}
	if (*end)
		return false;
	if (v && mul > UINT64_MAX / v)
		return false;
	*out = (uint64_t)v * mul;
	return true;
}

static bool parse_u32(const char *s, uint32_t *out)
{
	uint64_t v;

	if (!parse_u64(s, &v, false) || v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

/* ---- records ---------------------------------------------------------- */

struct rec {
	char f[2048];		/* " key=value" fields */
	size_t n;
	char msg[512];
	bool bad;		/* failed whatever the errno */
};

static void rec_add(struct rec *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void rec_add(struct rec *r, const char *fmt, ...)
{
	va_list ap;
	int k;

	if (r->n + 2 >= sizeof(r->f))
		return;
	r->f[r->n++] = ' ';
	va_start(ap, fmt);
	k = vsnprintf(r->f + r->n, sizeof(r->f) - r->n, fmt, ap);
	va_end(ap);
	if (k > 0)
		r->n += (size_t)k < sizeof(r->f) - r->n ? (size_t)k : sizeof(r->f) - r->n - 1;
}

/* Sets the message (first one wins); fail=true makes the step fail. */
static void rec_msg(struct rec *r, bool fail, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void rec_msg(struct rec *r, bool fail, const char *fmt, ...)
{
	va_list ap;
	char *p;

	if (fail)
		r->bad = true;
	if (r->msg[0])
		return;
	va_start(ap, fmt);
	vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
	va_end(ap);
	for (p = r->msg; *p; p++)	/* a record is one line */
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

/* ---- state ------------------------------------------------------------ */

struct step {
	const char *op;
	char **args;
	int nargs;
	int want;		/* expected errno */
	bool has_want;
	int ptr;		/* raw: 0 normal, 1 ptr=bad, 2 ptr=ro */
	int backend;		/* 0 driver, 1 heap (backend=heap): see the heap backend */
	const char *shows;	/* mmap: shows=KIND:ARG:BOFF, what every byte of the mapping must be */
	bool priv;		/* mmap: "private", MAP_PRIVATE instead of MAP_SHARED */
};

static struct {
	FILE *out;
	int fd;				/* device, -1 when not open */
	struct cma_mem_block *blk;	/* blocks ALLOCATE gave this process */
	size_t nblk, capblk;
	int step;			/* record counter, from 1 */
	bool child;			/* records carry proc=child */
	bool failed;
	bool exit_now;			/* "exit" ran */
	bool ktap;			/* --ktap: KTAP output */
	long pagesize;
	int req_fd;			/* server: its request FIFO, -1 elsewhere */
	const char *req_path;		/* server: that FIFO's path, and its identity */
	struct stat req_st;
} S = { .fd = -1, .req_fd = -1 };

/*
 * Remove the server's request FIFO if it is still ours (a new server of the same name
 * may have replaced a dead one's). Done before the reply to "exit" is closed, so that
 * when "ctl PROC exit" returns the name is already free: no window for a caller to race.
 */
static void drop_request_fifo(void)
{
	struct stat now;

	if (S.req_path && stat(S.req_path, &now) == 0 &&
	    now.st_ino == S.req_st.st_ino && now.st_dev == S.req_st.st_dev) {
		char pidfile[PATH_MAX];
		size_t n = strlen(S.req_path);
		FILE *f;
		int pid = 0;

		unlink(S.req_path);
		/* PROC.in -> PROC.pid (see write_pid_file), if it still names this server */
		if (n > 3 && n < sizeof(pidfile) - 1) {
			memcpy(pidfile, S.req_path, n - 3);
			strcpy(pidfile + n - 3, ".pid");
			f = fopen(pidfile, "re");
			if (f) {
				if (fscanf(f, "%d", &pid) == 1 && pid == (int)getpid())
					unlink(pidfile);
				fclose(f);
			}
		}
	}
	S.req_path = NULL;
}

/* Room for one more element in a growing array (doubling); out of memory ends the program. */
static void *grow(void *arr, size_t n, size_t *cap, size_t elem)
{
	if (n < *cap)
		return arr;
	*cap = *cap ? 2 * *cap : 16;
	arr = realloc(arr, *cap * elem);
	if (!arr) {
		perror("realloc");
		exit(1);
	}
	return arr;
}

static struct cma_mem_block *find_blk(const char *name)
{
	size_t i;

	for (i = 0; i < S.nblk; i++)
		if (!strncmp(S.blk[i].name, name, CMA_MEM_NAME_LEN))
			return &S.blk[i];
	return NULL;
}

static void add_blk(const struct cma_mem_block *b)
{
	struct cma_mem_block *old = find_blk(b->name);

	if (old) {
		*old = *b;
		return;
	}
	S.blk = grow(S.blk, S.nblk, &S.capblk, sizeof(*S.blk));
	S.blk[S.nblk++] = *b;
}

static void drop_blk(const char *name)
{
	struct cma_mem_block *b = find_blk(name);

	if (b)
		*b = S.blk[--S.nblk];
}

static void emit(const struct step *st, int step, int err, struct rec *r)
{
	int want = st->has_want ? st->want : 0;
	bool ok = err == want && !r->bad;

	if (!ok && !r->msg[0])
		rec_msg(r, false, "expected errno %s, got %s", errname(want), errname(err));
	if (S.ktap)	/* the record becomes a KTAP diagnostic line */
		fputs("# ", S.out);
	fprintf(S.out, "@cma step=%d op=%s status=%s errno=%s", step, st->op,
		ok ? "ok" : "fail", errname(err));
	if (st->has_want)
		fprintf(S.out, " expect=%s", errname(st->want));
	if (S.child)
		fputs(" proc=child", S.out);
	fwrite(r->f, 1, r->n, S.out);
	if (r->msg[0])
		fprintf(S.out, " msg=%s", r->msg);
	fputc('\n', S.out);
	if (S.ktap)
		fprintf(S.out, "%s %d - %s%s%s\n", ok ? "ok" : "not ok", step, st->op,
			st->nargs ? " " : "", st->nargs ? st->args[0] : "");
	fflush(S.out);
	if (!ok)
		S.failed = true;
}

static void print_usage_record(FILE *out, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void print_usage_record(FILE *out, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(out, "@cma op=usage status=fail errno=EINVAL msg=%s\n", msg);
	fflush(out);
}

static int need_fd(struct rec *r)
{
	if (S.fd >= 0)
		return 0;
	S.fd = open(CMA_MEM_DEVICE, O_RDWR | O_CLOEXEC);
	if (S.fd < 0) {
		int e = errno;

		rec_msg(r, false, "open %s: %s", CMA_MEM_DEVICE, strerror(e));
		return e;
	}
	return 0;
}

static void set_name(struct cma_mem_block *b, const char *name)
{
	size_t n = strlen(name);

	/* Up to the whole array, without a NUL if the name fills it. */
	memcpy(b->name, name, n < sizeof(b->name) ? n : sizeof(b->name));
}

static void rec_block(struct rec *r, const struct cma_mem_block *b)
{
	size_t n = strnlen(b->name, sizeof(b->name)), i;

	rec_add(r, "id=%" PRIu32, b->id);
	rec_add(r, "len=%" PRIu64, (uint64_t)b->len);
	rec_add(r, "phys=0x%" PRIx64, (uint64_t)b->phy_base);
	rec_add(r, "user=0x%" PRIx64, (uint64_t)b->mem_base);
	rec_add(r, "offset=0x%" PRIx64, (uint64_t)b->offset);
	/*
	 * The name the driver wrote back: NUL-terminated, and zeros after the NUL (this program
	 * always sends zeros there). Other bytes there are bytes the driver did not mean to copy
	 * to user space: uninitialised kernel memory, in the classic form of the bug.
	 */
	if (n == sizeof(b->name)) {
		rec_msg(r, true, "the returned name has no NUL");
		return;
	}
	for (i = n + 1; i < sizeof(b->name); i++)
		if (b->name[i]) {
			rec_add(r, "name_tail_at=%zu", i);
			rec_msg(r, true, "the returned name has non-zero bytes after its NUL (0x%02x at %zu)",
				(unsigned char)b->name[i], i);
			return;
		}
}

/* ---- guarded memory access -------------------------------------------- */

/*
 * verify/write/check touch the mappings; a mapping the driver broke must
 * produce a failed record, not a dead process. SIGSEGV/SIGBUS jump back.
 */
static sigjmp_buf fault_jb;
static volatile sig_atomic_t fault_armed;
static void *volatile fault_addr;

static void fault_handler(int sig, siginfo_t *si, void *ctx)
{
	(void)ctx;
	if (!fault_armed) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	fault_armed = 0;
	fault_addr = si->si_addr;
	siglongjmp(fault_jb, sig);
}

static void install_fault_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fault_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
}

/* Seeded test pattern, one 32-bit word at a time. */
static uint32_t seeded_word(uint32_t seed, uint64_t word)
{
	uint32_t x = (uint32_t)word * 0x9e3779b1u ^ (uint32_t)(word >> 32) ^
		     seed * 0x85ebca6bu;

	x ^= x >> 16;
	x *= 0x7feb352du;
	x ^= x >> 15;
	return x;
}

struct mismatch {
	uint64_t at;
	uint8_t want, got;
};

static __attribute__((noinline)) void fill_seeded(uint8_t *p, uint64_t len, uint32_t seed)
{
	uint64_t w;

	for (w = 0; w < len / 4; w++) {
		uint32_t v = seeded_word(seed, w);

		memcpy(p + 4 * w, &v, 4);
	}
}

static __attribute__((noinline)) bool scan_seeded(const uint8_t *p, uint64_t len, uint32_t seed,
						  struct mismatch *m)
{
	uint64_t w;

	for (w = 0; w < len / 4; w++) {
		uint32_t v = seeded_word(seed, w), got;
		int i;

		memcpy(&got, p + 4 * w, 4);
		if (got == v)
			continue;
		for (i = 0; i < 4; i++) {
			uint8_t a = ((const uint8_t *)&v)[i], b = ((const uint8_t *)&got)[i];

			if (a != b) {
				m->at = 4 * w + i;
				m->want = a;
				m->got = b;
				return false;
			}
		}
	}
	return true;
}

/*
 * Bytes from block offset boff on, as KIND leaves them: 'p' the driver's fill for block id
 * `arg`, 's' what "write NAME SEED" left (seed `arg`), anything else zeros. False at the first
 * wrong byte, which m then holds.
 */
static __attribute__((noinline)) bool scan_content(const uint8_t *p, uint64_t len, char kind,
						   uint32_t arg, uint64_t boff, struct mismatch *m)
{
	uint64_t i;

	for (i = 0; i < len; i++) {
		uint64_t o = boff + i;
		uint8_t want = 0;

		if (kind == 'p') {
			want = cma_mem_pattern_byte(arg, o);
		} else if (kind == 's') {
			uint32_t v = seeded_word(arg, o / 4);

			want = ((const uint8_t *)&v)[o % 4];	/* as fill_seeded's memcpy lays it */
		}
		if (p[i] != want) {
			m->at = i;
			m->want = want;
			m->got = p[i];
			return false;
		}
	}
	return true;
}

/* A scan that found a wrong byte: where, what was wanted, what was there. */
static void rec_mismatch(struct rec *r, const struct mismatch *m, const char *what)
{
	rec_add(r, "at=%" PRIu64, m->at);
	rec_add(r, "want=0x%02x", m->want);
	rec_add(r, "got=0x%02x", m->got);
	rec_msg(r, true, "%s", what);
}

/* A guarded access that faulted at fault_addr (base: the mapping's start); the step's EFAULT. */
static int rec_fault(struct rec *r, int sig, const void *base, const char *doing)
{
	rec_add(r, "at=%" PRIu64, (uint64_t)((uintptr_t)fault_addr - (uintptr_t)base));
	rec_msg(r, false, "%s while %s", sig == SIGBUS ? "SIGBUS" : "SIGSEGV", doing);
	return EFAULT;
}

enum mem_op { MEM_VERIFY, MEM_WRITE, MEM_CHECK };

/* Returns 0, or EFAULT when the mapping faulted (SIGSEGV/SIGBUS). */
static int guarded_mem(enum mem_op op, const struct cma_mem_block *b, uint32_t seed,
		       struct rec *r)
{
	uint8_t *p = (uint8_t *)(uintptr_t)b->mem_base;
	struct mismatch m;
	bool good = true;
	int sig;

	sig = sigsetjmp(fault_jb, 1);
	if (sig)
		return rec_fault(r, sig, p, "accessing the mapping");
	fault_armed = 1;
	switch (op) {
	case MEM_VERIFY:
		good = scan_content(p, b->len, 'p', b->id, 0, &m);
		break;
	case MEM_WRITE:
		fill_seeded(p, b->len, seed);
		good = scan_seeded(p, b->len, seed, &m);
		break;
	case MEM_CHECK:
		good = scan_seeded(p, b->len, seed, &m);
		break;
	}
	fault_armed = 0;
	if (!good)
		rec_mismatch(r, &m, "pattern mismatch");
	return 0;
}

/* ---- steps ------------------------------------------------------------ */

static int do_alloc(const struct step *st, struct rec *r)
{
	struct cma_mem_block b;
	uint64_t size, want_len;
	int e;

	parse_u64(st->args[1], &size, true);
	rec_add(r, "name=%s", st->args[0]);
	e = need_fd(r);
	if (e)
		return e;
	memset(&b, 0, sizeof(b));
	set_name(&b, st->args[0]);
	b.len = size;
	b.is_use_buffer = !strcmp(st->args[2], "wc") ? CMA_MEM_WC : CMA_MEM_COHERENT;
	if (ioctl(S.fd, CMEM_ALLOCATE, &b) < 0)
		return errno;
	rec_block(r, &b);

	/* What the driver returned must make sense. */
	want_len = (size + (uint64_t)S.pagesize - 1) & ~((uint64_t)S.pagesize - 1);
	if (b.id < 1)
		rec_msg(r, true, "driver returned id 0");
	else if (b.len != want_len)
		rec_msg(r, true, "driver returned len %" PRIu64 ", expected %" PRIu64,
			(uint64_t)b.len, want_len);
	else if (!b.mem_base || b.mem_base % (uint64_t)S.pagesize)
		rec_msg(r, true, "bad user address 0x%" PRIx64, (uint64_t)b.mem_base);
	else if (b.phy_base % (uint64_t)S.pagesize || b.offset % (uint64_t)S.pagesize)
		rec_msg(r, true, "physical address or offset not page aligned");
	else if (b.is_use_buffer != (!strcmp(st->args[2], "wc") ? CMA_MEM_WC : CMA_MEM_COHERENT))
		rec_msg(r, true, "driver changed is_use_buffer");
	add_blk(&b);
	return 0;
}

static int do_free(const struct step *st, struct rec *r)
{
	struct cma_mem_block b;
	int e;

	rec_add(r, "name=%s", st->args[0]);
	e = need_fd(r);
	if (e)
		return e;
	memset(&b, 0, sizeof(b));
	set_name(&b, st->args[0]);
	if (ioctl(S.fd, CMEM_UNMAP, &b) < 0)
		return errno;
	drop_blk(st->args[0]);	/* the driver unmapped it */
	return 0;
}

static int do_mem(const struct step *st, struct rec *r, enum mem_op op)
{
	const struct cma_mem_block *b;
	uint32_t seed = 0;

	rec_add(r, "name=%s", st->args[0]);
	if (op != MEM_VERIFY) {
		parse_u32(st->args[1], &seed);
		rec_add(r, "seed=%" PRIu32, seed);
	}
	b = find_blk(st->args[0]);
	if (!b) {
		rec_msg(r, false, "no block %s in this process", st->args[0]);
		return ENOENT;
	}
	rec_add(r, "bytes=%" PRIu64, (uint64_t)b->len);
	return guarded_mem(op, b, seed, r);
}

static int do_info(const struct step *st, struct rec *r)
{
	struct cma_mem_block b;
	int e;

	rec_add(r, "name=%s", st->args[0]);
	e = need_fd(r);
	if (e)
		return e;
	memset(&b, 0, sizeof(b));
	set_name(&b, st->args[0]);
	if (ioctl(S.fd, CMEM_GET_PHYS, &b) < 0)
		return errno;
	rec_block(r, &b);
	return 0;
}

static int do_total(struct rec *r)
{
	struct cma_mem_info info;
	int e = need_fd(r);

	if (e)
		return e;
	memset(&info, 0, sizeof(info));
	if (ioctl(S.fd, CMEM_GET_TOTAL_SIZE, &info) < 0)
		return errno;
	rec_add(r, "cma_total=%" PRIu64, (uint64_t)info.cma_total);
	rec_add(r, "used=%" PRIu64, (uint64_t)info.used);
	rec_add(r, "available=%" PRIu64, (uint64_t)info.available);
	rec_add(r, "blocks=%" PRIu32, info.blocks);
	if (info.reserved)
		rec_msg(r, true, "reserved field is %" PRIu32, info.reserved);
	return 0;
}

/*
 * exhaust CHUNK[,CHUNK...]: allocate CHUNK-sized coherent blocks until ENOMEM,
 * then go on with the next (smaller) chunk size, holding everything until
 * the end: a greedy measure of the total the driver can still hand out
 * (big chunks keep it fast, the last chunk sets its granularity).
 */
static int do_exhaust(const struct step *st, struct rec *r)
{
	struct cma_mem_block *got = NULL;
	uint64_t chunk, total = 0;
	size_t count = 0, cap = 0, i;
	int e, stop = 0, free_err = 0;
	bool bogus = false;
	char list[128], *save = NULL, *tok;

	snprintf(list, sizeof(list), "%s", st->args[0]);
	rec_add(r, "chunk=%s", st->args[0]);
	e = need_fd(r);
	if (e)
		return e;
	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		parse_u64(tok, &chunk, true);
		stop = 0;
		while (count < EXHAUST_MAX) {
			struct cma_mem_block b;

			memset(&b, 0, sizeof(b));
			snprintf(b.name, sizeof(b.name), "exh.%zu", count);
			b.len = chunk;
			b.is_use_buffer = CMA_MEM_COHERENT;
			if (ioctl(S.fd, CMEM_ALLOCATE, &b) < 0) {
				stop = errno;
				break;
			}
			if (!b.id || !b.mem_base || b.len < chunk) {
				/* "Success" without a block: counting on would never end. */
				bogus = true;
				break;
			}
			if (count == cap) {
				struct cma_mem_block *p;

				cap = cap ? 2 * cap : 64;
				p = realloc(got, cap * sizeof(*p));
				if (!p) {
					stop = ENOMEM;
					rec_msg(r, true, "out of memory in cma_test");
					ioctl(S.fd, CMEM_UNMAP, &b);	/* not on the list */
					break;
				}
				got = p;
			}
			got[count++] = b;
			total += b.len;
		}
		if (stop != ENOMEM || bogus)
			break;
	}
	for (i = 0; i < count; i++)
		if (ioctl(S.fd, CMEM_UNMAP, &got[i]) < 0 && !free_err)
			free_err = errno;
	free(got);

	rec_add(r, "total=%" PRIu64, total);
	rec_add(r, "count=%zu", count);
	if (free_err) {
		rec_msg(r, true, "freeing an exhaust block failed: %s", errname(free_err));
		return free_err;
	}
	if (bogus) {
		rec_msg(r, true, "CMEM_ALLOCATE returned 0 without a block (id, address or length missing)");
		return 0;
	}
	if (stop == ENOMEM)
		return 0;	/* ran out of CMA: the expected end */
	if (!stop)
		rec_msg(r, true, "still allocating after %d blocks", EXHAUST_MAX);
	else
		rec_msg(r, false, "allocation stopped with %s, not ENOMEM", errname(stop));
	return stop;
}

static const struct {
	const char *name;
	unsigned long cmd;
} cmds[] = {
	{ "CMEM_GET_PHYS", CMEM_GET_PHYS },
	{ "CMEM_MAP", CMEM_MAP },
	{ "CMEM_GET_SIZE", CMEM_GET_SIZE },
	{ "CMEM_UNMAP", CMEM_UNMAP },
	{ "CMEM_ALLOCATE", CMEM_ALLOCATE },
	{ "CMEM_CONNECT", CMEM_CONNECT },
	{ "CMEM_GET_TOTAL_SIZE", CMEM_GET_TOTAL_SIZE },
	{ "CMEM_CACHE_FLUSH", CMEM_CACHE_FLUSH },
};

static bool parse_cmd(const char *s, unsigned long *cmd)
{
	uint32_t v;
	size_t i;

	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (!strcmp(cmds[i].name, s)) {
			*cmd = cmds[i].cmd;
			return true;
		}
	}
	if (!parse_u32(s, &v))
		return false;
	*cmd = v;
	return true;
}

static int do_raw(const struct step *st, struct rec *r)
{
	union {
		struct cma_mem_block b;
		struct cma_mem_info i;
		unsigned char pad[256];
	} u;
	unsigned long cmd = 0;
	uint64_t len = 0;
	uint32_t flags = 0;
	void *arg = &u, *page = MAP_FAILED;
	int ret, e;

	parse_cmd(st->args[0], &cmd);
	parse_u64(st->args[2], &len, true);
	parse_u32(st->args[3], &flags);
	rec_add(r, "cmd=0x%lx", cmd);
	rec_add(r, "name=%s", st->args[1]);
	e = need_fd(r);
	if (e)
		return e;
	memset(&u, 0, sizeof(u));
	if (strcmp(st->args[1], "-"))
		set_name(&u.b, st->args[1]);
	u.b.len = len;
	u.b.is_use_buffer = flags;

	if (st->ptr == 1) {
		arg = (void *)(uintptr_t)16;	/* never mapped */
	} else if (st->ptr == 2) {
		/* Readable but not writable: the driver's copy back fails. */
		page = mmap(NULL, (size_t)S.pagesize, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (page == MAP_FAILED) {
			e = errno;
			rec_msg(r, true, "mmap for ptr=ro: %s", strerror(e));
			return e;
		}
		memcpy(page, &u, sizeof(u));
		mprotect(page, (size_t)S.pagesize, PROT_READ);
		arg = page;
	}
	ret = ioctl(S.fd, cmd, arg);
	e = ret < 0 ? errno : 0;
	if (page != MAP_FAILED) {
		memcpy(&u, page, sizeof(u));
		munmap(page, (size_t)S.pagesize);
	}
	rec_add(r, "ret=%d", ret);
	if (ret == 0 && st->ptr == 0) {
		if (cmd == CMEM_GET_TOTAL_SIZE) {
			rec_add(r, "cma_total=%" PRIu64, (uint64_t)u.i.cma_total);
			rec_add(r, "used=%" PRIu64, (uint64_t)u.i.used);
			rec_add(r, "available=%" PRIu64, (uint64_t)u.i.available);
			rec_add(r, "blocks=%" PRIu32, u.i.blocks);
		} else if (cmd == CMEM_ALLOCATE || cmd == CMEM_GET_PHYS ||
			   cmd == CMEM_GET_SIZE) {
			rec_block(r, &u.b);
		}
		if (cmd == CMEM_ALLOCATE)
			add_blk(&u.b);
		else if (cmd == CMEM_UNMAP)
			drop_blk(u.b.name);
	}
	return e;
}

/* OFFSET: number, @NAME or @NAME+N. */
static int resolve_offset(const char *s, uint64_t *off, struct rec *r)
{
	char name[CMA_MEM_NAME_LEN + 1];
	const struct cma_mem_block *b;
	const char *plus;
	uint64_t extra = 0;
	size_t n;

	if (s[0] != '@') {
		parse_u64(s, off, true);
		return 0;
	}
	plus = strchr(s + 1, '+');
	n = plus ? (size_t)(plus - s - 1) : strlen(s + 1);
	if (n >= sizeof(name))
		n = sizeof(name) - 1;
	memcpy(name, s + 1, n);
	name[n] = 0;
	if (plus)
		parse_u64(plus + 1, &extra, true);
	b = find_blk(name);
	if (!b) {
		rec_msg(r, false, "no block %s in this process", name);
		return ENOENT;
	}
	*off = b->offset + extra;
	return 0;
}

/*
 * shows=KIND:ARG:BOFF: the mapping must show its block from block offset BOFF on, every byte:
 * the driver's fill (pattern:ID), what "write NAME SEED" left (seeded:SEED) or zeros. The
 * caller (the driver model) knows which block and where; this checks the driver mapped it so.
 */
static int check_shows(const uint8_t *p, uint64_t len, const char *shows, struct rec *r)
{
	char kind[16];
	unsigned long long arg = 0, boff = 0;
	struct mismatch m = { 0 };
	bool good;
	int sig;

	sscanf(shows, "%15[a-z]:%llu:%llu", kind, &arg, &boff);	/* checked by check_args */
	sig = sigsetjmp(fault_jb, 1);
	if (sig)
		return rec_fault(r, sig, p, "reading the new mapping");
	fault_armed = 1;
	good = scan_content(p, len, kind[0], (uint32_t)arg, boff, &m);
	fault_armed = 0;
	if (!good)
		rec_mismatch(r, &m, "the mapping shows other bytes than its block at that offset");
	return 0;
}

static int do_mmap(const struct step *st, struct rec *r)
{
	uint64_t off = 0, len = 0;
	void *p;
	int e;

	parse_u64(st->args[1], &len, true);
	e = resolve_offset(st->args[0], &off, r);
	rec_add(r, "offset=0x%" PRIx64, off);
	rec_add(r, "len=%" PRIu64, len);
	if (e)
		return e;
	e = need_fd(r);
	if (e)
		return e;
	if (len > SIZE_MAX || off > (uint64_t)INT64_MAX)
		return EOVERFLOW;
	if (st->priv)
		rec_add(r, "private=1");
	p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, st->priv ? MAP_PRIVATE : MAP_SHARED, S.fd,
		 (off_t)off);
	if (p == MAP_FAILED)
		return errno;
	/* Kept mapped: a second mapping keeps the block alive in the driver. */
	rec_add(r, "addr=0x%" PRIxPTR, (uintptr_t)p);
	return st->shows ? check_shows(p, len, st->shows, r) : 0;
}

static int do_sleep(const struct step *st, struct rec *r)
{
	uint64_t ms = 0;
	struct timespec ts;

	parse_u64(st->args[0], &ms, false);
	rec_add(r, "ms=%" PRIu64, ms);
	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)(ms % 1000) * 1000000L;
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	return 0;
}

/*
 * A mapping holds the file open, so the driver's release (which frees
 * the file's blocks) runs only once the mappings are gone: unmap the ones
 * ALLOCATE made, as the process would before closing. Mappings made by
 * "mmap" steps stay, and keep their blocks until this process exits.
 */
static int do_close(struct rec *r)
{
	size_t i;
	int e = 0;

	rec_add(r, "blocks=%zu", S.nblk);
	if (S.fd < 0)
		return 0;
	for (i = 0; i < S.nblk; i++)
		if (S.blk[i].mem_base)
			munmap((void *)(uintptr_t)S.blk[i].mem_base, (size_t)S.blk[i].len);
	S.nblk = 0;
	if (close(S.fd) < 0)
		e = errno;
	S.fd = -1;
	return e;
}

/* ---- heap backend ----------------------------------------------------- */

/*
 * The kernel's own CMA heap (drivers/dma-buf/heaps/cma_heap.c): the same CMA
 * area through code that shares nothing with the driver. A step ending in
 * backend=heap (or every step after a leading "--backend heap") allocates
 * with DMA_HEAP_IOCTL_ALLOC on /dev/dma_heap/<name>, maps through the
 * returned dma-buf fd and brackets CPU access with DMA_BUF_IOCTL_SYNC.
 * Freeing is munmap() + close() of the dma-buf fd. The heap hands out
 * zeroed memory: "verify" checks zeros, not the driver's pattern.
 */
#if __has_include(<linux/dma-heap.h>) && __has_include(<linux/dma-buf.h>)
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#else
/* Stable uapi, copied from include/uapi/linux/dma-heap.h and dma-buf.h (Linux 5.6+). */
struct dma_heap_allocation_data {
	uint64_t len;
	uint32_t fd;
	uint32_t fd_flags;
	uint64_t heap_flags;
};
#define DMA_HEAP_IOCTL_ALLOC _IOWR('H', 0x0, struct dma_heap_allocation_data)
struct dma_buf_sync {
	uint64_t flags;
};
#define DMA_BUF_SYNC_READ (1 << 0)
#define DMA_BUF_SYNC_WRITE (2 << 0)
#define DMA_BUF_SYNC_RW (DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE)
#define DMA_BUF_SYNC_START (0 << 2)
#define DMA_BUF_SYNC_END (1 << 2)
#define DMA_BUF_IOCTL_SYNC _IOW('b', 0, struct dma_buf_sync)
#endif
#include <dirent.h>
#include <sys/resource.h>

#define HEAP_DIR "/dev/dma_heap"
#define BENCH_MAX 100000

enum backend { BACKEND_DRIVER = 0, BACKEND_HEAP = 1 };

struct hblk {
	char name[CMA_MEM_NAME_LEN + 1];
	int fd;			/* the dma-buf */
	uint64_t len;
	uint8_t *addr;		/* its mapping, NULL if not mapped */
};

static struct {
	int default_backend;	/* for steps without backend= ("--backend heap") */
	int fd;			/* /dev/dma_heap/<name>, -1 until first use */
	char name[256];		/* the heap in use */
	char all[256];		/* every heap in /dev/dma_heap, comma separated */
	int why;		/* errno of the last failed discovery */
	struct hblk *blk;
	size_t nblk, capblk;
	bool nofile_raised;
} H = { .fd = -1 };

/*
 * Pick the CMA heap: "reserved" (the default CMA area from cma= or
 * CONFIG_CMA_SIZE_*), then "linux,cma" (a reserved-memory node), then any
 * heap not named "system". 0, or ENOENT (no /dev/dma_heap: the kernel has
 * no CONFIG_DMABUF_HEAPS) or ENODEV (heaps, but no CMA heap).
 */
static int heap_discover(struct rec *r)
{
	static const char *prefer[] = { "reserved", "linux,cma" };
	char other[256] = "";
	struct dirent *de;
	size_t i, n = 0;
	DIR *d;

	H.all[0] = 0;
	d = opendir(HEAP_DIR);
	if (!d) {
		H.why = errno == ENOENT ? ENOENT : errno;
		rec_msg(r, false, "no " HEAP_DIR " (CONFIG_DMABUF_HEAPS_CMA not set?)");
		return H.why;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		n += (size_t)snprintf(H.all + n, n < sizeof(H.all) ? sizeof(H.all) - n : 0, "%s%s",
				      n ? "," : "", de->d_name);
		if (n >= sizeof(H.all))
			n = sizeof(H.all) - 1;
		if (!other[0] && strncmp(de->d_name, "system", 6))
			snprintf(other, sizeof(other), "%s", de->d_name);
	}
	closedir(d);
	H.name[0] = 0;
	for (i = 0; i < sizeof(prefer) / sizeof(prefer[0]) && !H.name[0]; i++) {
		char path[300];

		snprintf(path, sizeof(path), HEAP_DIR "/%s", prefer[i]);
		if (!access(path, F_OK))
			snprintf(H.name, sizeof(H.name), "%s", prefer[i]);
	}
	if (!H.name[0] && other[0])
		snprintf(H.name, sizeof(H.name), "%s", other);
	if (!H.name[0]) {
		H.why = ENODEV;
		rec_msg(r, false, "no CMA heap in " HEAP_DIR " (heaps: %s)", H.all[0] ? H.all : "none");
		return ENODEV;
	}
	return 0;
}

static int need_heap(struct rec *r)
{
	char path[300];
	int e;

	if (H.fd >= 0)
		return 0;
	e = heap_discover(r);
	if (e)
		return e;
	snprintf(path, sizeof(path), HEAP_DIR "/%s", H.name);
	H.fd = open(path, O_RDWR | O_CLOEXEC);
	if (H.fd < 0) {
		e = errno;
		rec_msg(r, false, "open %s: %s", path, strerror(e));
		return e;
	}
	/* One fd per buffer: exhausting 128 MiB in 4 KiB buffers needs 32768. */
	if (!H.nofile_raised) {
		struct rlimit rl = { 1 << 20, 1 << 20 };

		if (setrlimit(RLIMIT_NOFILE, &rl) < 0 && !getrlimit(RLIMIT_NOFILE, &rl)) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		H.nofile_raised = true;
	}
	return 0;
}

static struct hblk *find_hblk(const char *name)
{
	size_t i;

	for (i = 0; i < H.nblk; i++)
		if (!strncmp(H.blk[i].name, name, CMA_MEM_NAME_LEN))
			return &H.blk[i];
	return NULL;
}

static void add_hblk(const struct hblk *b)
{
	H.blk = grow(H.blk, H.nblk, &H.capblk, sizeof(*H.blk));
	H.blk[H.nblk++] = *b;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One dma-buf of len bytes from the heap: its fd, or -errno. */
static int heap_alloc_fd(uint64_t len)
{
	struct dma_heap_allocation_data data;

	memset(&data, 0, sizeof(data));
	data.len = len;
	data.fd_flags = O_RDWR | O_CLOEXEC;
	if (ioctl(H.fd, DMA_HEAP_IOCTL_ALLOC, &data) < 0)
		return -errno;
	return (int)data.fd;
}

static int heap_sync(int fd, uint64_t flags)
{
	struct dma_buf_sync sync = { .flags = flags };

	while (ioctl(fd, DMA_BUF_IOCTL_SYNC, &sync) < 0) {
		if (errno != EINTR && errno != EAGAIN)
			return errno;
	}
	return 0;
}

/*
 * A buffer of either backend, for the measuring steps (exhaust, bench,
 * largest, fragtest): the driver's block (allocated and mapped by
 * CMEM_ALLOCATE) or a heap dma-buf fd (not mapped).
 */
struct xbuf {
	int backend;
	int fd;
	uint64_t len;
	struct cma_mem_block b;
};

static int x_alloc(int backend, uint64_t len, struct xbuf *x)
{
	static unsigned int seq;

	memset(x, 0, sizeof(*x));
	x->backend = backend;
	x->len = len;
	x->fd = -1;
	if (backend == BACKEND_HEAP) {
		int fd = heap_alloc_fd(len);

		if (fd < 0)
			return -fd;
		x->fd = fd;
		return 0;
	}
	snprintf(x->b.name, sizeof(x->b.name), "x.%u", ++seq);
	x->b.len = len;
	x->b.is_use_buffer = CMA_MEM_COHERENT;
	if (ioctl(S.fd, CMEM_ALLOCATE, &x->b) < 0)
		return errno;
	if (!x->b.id || !x->b.mem_base)
		return EPROTO;	/* "success" without a block */
	return 0;
}

static int x_free(struct xbuf *x)
{
	if (x->backend == BACKEND_HEAP)
		return close(x->fd) < 0 ? errno : 0;
	return ioctl(S.fd, CMEM_UNMAP, &x->b) < 0 ? errno : 0;
}

/* The device or the heap must be open before a measuring step starts. */
static int x_open(int backend, struct rec *r)
{
	rec_add(r, "backend=%s", backend == BACKEND_HEAP ? "heap" : "driver");
	if (backend == BACKEND_HEAP) {
		int e = need_heap(r);

		if (!e)
			rec_add(r, "heap=%s", H.name);
		return e;
	}
	return need_fd(r);
}

/* alloc NAME SIZE TYPE backend=heap: TYPE is ignored (heap mappings are cached). */
static int heap_do_alloc(const struct step *st, struct rec *r)
{
	struct hblk b;
	uint64_t size;
	void *p;
	int e, fd;

	parse_u64(st->args[1], &size, true);
	rec_add(r, "name=%s", st->args[0]);
	rec_add(r, "backend=heap");
	e = need_heap(r);
	if (e)
		return e;
	rec_add(r, "heap=%s", H.name);
	if (find_hblk(st->args[0]) || find_blk(st->args[0])) {
		rec_msg(r, false, "a block named %s exists in this process", st->args[0]);
		return EEXIST;
	}
	fd = heap_alloc_fd(size);
	if (fd < 0)
		return -fd;
	memset(&b, 0, sizeof(b));
	snprintf(b.name, sizeof(b.name), "%s", st->args[0]);
	b.fd = fd;
	b.len = (size + (uint64_t)S.pagesize - 1) & ~((uint64_t)S.pagesize - 1);
	p = mmap(NULL, (size_t)b.len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		e = errno;
		close(fd);
		rec_msg(r, true, "mmap of the dma-buf: %s", strerror(e));
		return e;
	}
	b.addr = p;
	rec_add(r, "fd=%d", fd);
	rec_add(r, "len=%" PRIu64, b.len);
	rec_add(r, "user=0x%" PRIxPTR, (uintptr_t)p);
	add_hblk(&b);
	return 0;
}

static int heap_do_free(const struct step *st, struct rec *r)
{
	struct hblk *b;
	int e = 0;

	rec_add(r, "name=%s", st->args[0]);
	rec_add(r, "backend=heap");
	b = find_hblk(st->args[0]);
	if (!b)
		return ENOENT;
	if (b->addr && munmap(b->addr, (size_t)b->len) < 0)
		e = errno;
	if (close(b->fd) < 0 && !e)
		e = errno;
	*b = H.blk[--H.nblk];
	return e;
}

/* The access itself, guarded like the driver's (SIGSEGV/SIGBUS become EFAULT). */
static int heap_guarded(enum mem_op op, const struct hblk *b, uint32_t seed, struct rec *r)
{
	struct mismatch m;
	bool good = true;
	int sig;

	sig = sigsetjmp(fault_jb, 1);
	if (sig)
		return rec_fault(r, sig, b->addr, "accessing the mapping");
	fault_armed = 1;
	if (op == MEM_VERIFY) {
		good = scan_content(b->addr, b->len, 'z', 0, 0, &m);
	} else {
		if (op == MEM_WRITE)
			fill_seeded(b->addr, b->len, seed);
		good = scan_seeded(b->addr, b->len, seed, &m);
	}
	fault_armed = 0;
	if (!good)
		rec_mismatch(r, &m, op == MEM_VERIFY ? "heap buffer not zeroed" : "pattern mismatch");
	return 0;
}

/* verify (zeros) / write / check on a heap buffer, inside DMA_BUF_IOCTL_SYNC START..END. */
static int heap_do_mem(const struct step *st, struct rec *r, enum mem_op op)
{
	uint64_t flags = op == MEM_WRITE ? DMA_BUF_SYNC_RW : DMA_BUF_SYNC_READ;
	struct hblk *b;
	uint32_t seed = 0;
	int e, e2;

	rec_add(r, "name=%s", st->args[0]);
	if (op != MEM_VERIFY) {
		parse_u32(st->args[1], &seed);
		rec_add(r, "seed=%" PRIu32, seed);
	}
	rec_add(r, "backend=heap");
	b = find_hblk(st->args[0]);
	if (!b) {
		rec_msg(r, false, "no heap buffer %s in this process", st->args[0]);
		return ENOENT;
	}
	rec_add(r, "bytes=%" PRIu64, b->len);
	e = heap_sync(b->fd, DMA_BUF_SYNC_START | flags);
	if (e) {
		rec_msg(r, true, "DMA_BUF_IOCTL_SYNC start: %s", strerror(e));
		return e;
	}
	e = heap_guarded(op, b, seed, r);
	e2 = heap_sync(b->fd, DMA_BUF_SYNC_END | flags);
	if (e2)
		rec_msg(r, true, "DMA_BUF_IOCTL_SYNC end: %s", strerror(e2));
	return e ? e : e2;
}

/* heapinfo: which heaps the kernel has, and the one the heap backend uses. */
static int heap_do_info(struct rec *r)
{
	int e = need_heap(r);

	rec_add(r, "heaps=%s", H.all[0] ? H.all : "-");
	if (e)
		return e;
	rec_add(r, "heap=%s", H.name);
	return 0;
}

/* exhaust CHUNK[,CHUNK...] backend=heap: as the driver's exhaust, through the heap. */
static int heap_do_exhaust(const struct step *st, struct rec *r)
{
	struct xbuf *got = NULL;
	uint64_t chunk, total = 0;
	size_t count = 0, cap = 0, i;
	int e, stop = 0, free_err = 0;
	char list[128], *save = NULL, *tok;

	snprintf(list, sizeof(list), "%s", st->args[0]);
	rec_add(r, "chunk=%s", st->args[0]);
	e = x_open(BACKEND_HEAP, r);
	if (e)
		return e;
	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		parse_u64(tok, &chunk, true);
		stop = 0;
		while (count < EXHAUST_MAX) {
			struct xbuf x;

			stop = x_alloc(BACKEND_HEAP, chunk, &x);
			if (stop)
				break;
			if (count == cap) {
				struct xbuf *p;

				cap = cap ? 2 * cap : 64;
				p = realloc(got, cap * sizeof(*p));
				if (!p) {
					stop = ENOMEM;
					rec_msg(r, true, "out of memory in cma_test");
					x_free(&x);
					break;
				}
				got = p;
			}
			got[count++] = x;
			total += chunk;
		}
		if (stop != ENOMEM)
			break;
	}
	for (i = 0; i < count; i++)
		if (x_free(&got[i]) && !free_err)
			free_err = errno;
	free(got);
	rec_add(r, "total=%" PRIu64, total);
	rec_add(r, "count=%zu", count);
	if (free_err) {
		rec_msg(r, true, "closing a dma-buf failed: %s", errname(free_err));
		return free_err;
	}
	if (stop == ENOMEM)
		return 0;
	if (!stop)
		rec_msg(r, true, "still allocating after %d buffers", EXHAUST_MAX);
	else
		rec_msg(r, false, "allocation stopped with %s, not ENOMEM", errname(stop));
	return stop;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, size_t n)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_u64);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/*
 * bench SIZE COUNT: COUNT times allocate one SIZE buffer, map it (heap:
 * mmap of the dma-buf; the driver's CMEM_ALLOCATE maps by itself), touch
 * its first and last page, free it. Medians in ns of each phase, timed
 * with CLOCK_MONOTONIC around each call. alloc: the allocating ioctl;
 * map: mmap (heap only); free: CMEM_UNMAP (driver) or munmap + close (heap).
 */
static int do_bench(const struct step *st, int backend, struct rec *r)
{
	uint64_t size, count, i, *ta, *tm, *tf;
	int e = 0;

	parse_u64(st->args[0], &size, true);
	parse_u64(st->args[1], &count, false);
	rec_add(r, "size=%" PRIu64, size);
	e = x_open(backend, r);
	if (e)
		return e;
	ta = calloc(count, sizeof(*ta));
	tm = calloc(count, sizeof(*tm));
	tf = calloc(count, sizeof(*tf));
	if (!ta || !tm || !tf) {
		free(ta);
		free(tm);
		free(tf);
		rec_msg(r, true, "out of memory in cma_test");
		return ENOMEM;
	}
	for (i = 0; i < count; i++) {
		struct xbuf x;
		uint64_t t0, t1, t2, t3;
		volatile uint8_t *p;
		void *map = NULL;
		uint64_t len = (size + (uint64_t)S.pagesize - 1) & ~((uint64_t)S.pagesize - 1);

		t0 = now_ns();
		e = x_alloc(backend, size, &x);
		t1 = now_ns();
		if (e)
			break;
		if (backend == BACKEND_HEAP) {
			map = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, x.fd, 0);
			if (map == MAP_FAILED) {
				e = errno;
				x_free(&x);
				rec_msg(r, true, "mmap of the dma-buf: %s", strerror(e));
				break;
			}
		} else {
			map = (void *)(uintptr_t)x.b.mem_base;
		}
		t2 = now_ns();
		p = map;
		p[0] = 1;
		p[len - 1] = 1;
		t3 = now_ns();
		if (backend == BACKEND_HEAP)
			munmap(map, (size_t)len);
		e = x_free(&x);
		tf[i] = now_ns() - t3;
		ta[i] = t1 - t0;
		tm[i] = t2 - t1;
		if (e) {
			rec_msg(r, true, "free failed: %s", errname(e));
			break;
		}
	}
	rec_add(r, "count=%" PRIu64, i);
	rec_add(r, "alloc_ns=%" PRIu64, median(ta, (size_t)i));
	rec_add(r, "map_ns=%" PRIu64, median(tm, (size_t)i));
	rec_add(r, "free_ns=%" PRIu64, median(tf, (size_t)i));
	free(ta);
	free(tm);
	free(tf);
	return e;
}

/*
 * largest GRANULE: the largest single allocation that succeeds now, to
 * GRANULE: doubles until one fails, then bisects. Nothing stays allocated.
 */
static int do_largest(const struct step *st, int backend, struct rec *r)
{
	uint64_t g, lo = 0, hi, n;
	int probes = 0, e;

	parse_u64(st->args[0], &g, true);
	e = x_open(backend, r);
	if (e)
		return e;
	/* lo: known to fit (in granules); hi: known not to fit. */
	for (n = 1;; n *= 2) {
		struct xbuf x;

		probes++;
		e = x_alloc(backend, n * g, &x);
		if (e) {
			hi = n;
			break;
		}
		x_free(&x);
		lo = n;
		if (n > (1ull << 40) / g) {
			rec_msg(r, true, "still allocating at %" PRIu64 " bytes", n * g);
			return 0;
		}
	}
	if (e != ENOMEM) {
		rec_msg(r, false, "allocation failed with %s, not ENOMEM", errname(e));
		return e;
	}
	while (hi - lo > 1) {
		struct xbuf x;
		uint64_t mid = lo + (hi - lo) / 2;

		probes++;
		e = x_alloc(backend, mid * g, &x);
		if (e == ENOMEM) {
			hi = mid;
		} else if (e) {
			rec_msg(r, false, "allocation failed with %s, not ENOMEM", errname(e));
			return e;
		} else {
			x_free(&x);
			lo = mid;
		}
	}
	rec_add(r, "largest=%" PRIu64, lo * g);
	rec_add(r, "probes=%d", probes);
	return 0;
}

/*
 * fragtest CHUNK: fill the area with CHUNK buffers until ENOMEM, free every
 * other one (half the area is free again, in CHUNK-sized holes), then try
 * one buffer of 2*CHUNK (large=) and one of CHUNK (small=); free all.
 */
static int do_fragtest(const struct step *st, int backend, struct rec *r)
{
	struct xbuf *got = NULL, big, small;
	size_t count = 0, cap = 0, i;
	uint64_t chunk;
	int e, large_e, small_e;

	parse_u64(st->args[0], &chunk, true);
	rec_add(r, "chunk=%" PRIu64, chunk);
	e = x_open(backend, r);
	if (e)
		return e;
	for (;;) {
		struct xbuf x;

		if (count >= EXHAUST_MAX) {
			e = 0;
			break;
		}
		e = x_alloc(backend, chunk, &x);
		if (e)
			break;
		if (count == cap) {
			struct xbuf *p;

			cap = cap ? 2 * cap : 64;
			p = realloc(got, cap * sizeof(*p));
			if (!p) {
				x_free(&x);
				e = -1;
				break;
			}
			got = p;
		}
		got[count++] = x;
	}
	if (e != ENOMEM) {
		for (i = 0; i < count; i++)
			x_free(&got[i]);
		free(got);
		rec_msg(r, true, "filling stopped with %s, not ENOMEM", e < 0 ? "cma_test out of memory" : errname(e));
		return e > 0 ? e : 0;
	}
	for (i = 0; i < count; i += 2)
		x_free(&got[i]);
	large_e = x_alloc(backend, 2 * chunk, &big);
	small_e = x_alloc(backend, chunk, &small);
	if (!large_e)
		x_free(&big);
	if (!small_e)
		x_free(&small);
	for (i = 1; i < count; i += 2)
		x_free(&got[i]);
	free(got);
	rec_add(r, "count=%zu", count);
	rec_add(r, "freed=%zu", (count + 1) / 2);
	rec_add(r, "large=%s", errname(large_e));
	rec_add(r, "small=%s", errname(small_e));
	return 0;
}

/* ---- parsing and running ---------------------------------------------- */

static const struct {
	const char *op;
	int nargs;
} ops[] = {
	{ "alloc", 3 }, { "free", 1 }, { "verify", 1 }, { "write", 2 },
	{ "check", 2 }, { "info", 1 }, { "total", 0 }, { "exhaust", 1 },
	{ "raw", 4 }, { "mmap", 2 }, { "fork", 0 }, { "sleep", 1 },
	{ "close", 0 }, { "exit", 0 },
	/* the heap backend's section: measuring steps for either backend */
	{ "heapinfo", 0 }, { "bench", 2 }, { "largest", 1 }, { "fragtest", 1 },
};

/* Steps the heap backend has (the others are the driver's own ioctls). */
static bool heap_has(const char *op)
{
	static const char *const both[] = { "alloc", "free", "verify", "write", "check",
					    "exhaust", "bench", "largest", "fragtest",
					    "heapinfo", "fork", "sleep", "exit" };
	size_t i;

	for (i = 0; i < sizeof(both) / sizeof(both[0]); i++)
		if (!strcmp(both[i], op))
			return true;
	return false;
}

static bool is_name_ok(const char *s)
{
	return *s && strlen(s) <= 64;
}

/* Checks the arguments a step will parse again when it runs. */
static const char *check_args(const struct step *st)
{
	static char why[160];
	const char *op = st->op;
	uint64_t v;
	uint32_t v32;
	unsigned long cmd;

#define BAD(...) do { snprintf(why, sizeof(why), __VA_ARGS__); return why; } while (0)
	if (!strcmp(op, "alloc")) {
		if (!is_name_ok(st->args[0]))
			BAD("alloc: bad name '%s'", st->args[0]);
		if (!parse_u64(st->args[1], &v, true))
			BAD("alloc: bad size '%s'", st->args[1]);
		if (strcmp(st->args[2], "wc") && strcmp(st->args[2], "coherent"))
			BAD("alloc: type must be wc or coherent, not '%s'", st->args[2]);
	} else if (!strcmp(op, "free") || !strcmp(op, "verify") || !strcmp(op, "info")) {
		if (!is_name_ok(st->args[0]))
			BAD("%s: bad name '%s'", op, st->args[0]);
	} else if (!strcmp(op, "write") || !strcmp(op, "check")) {
		if (!is_name_ok(st->args[0]))
			BAD("%s: bad name '%s'", op, st->args[0]);
		if (!parse_u32(st->args[1], &v32))
			BAD("%s: bad seed '%s'", op, st->args[1]);
	} else if (!strcmp(op, "exhaust")) {
		char list[128], *save = NULL, *tok;

		if (strlen(st->args[0]) >= sizeof(list))
			BAD("exhaust: chunk list too long");
		snprintf(list, sizeof(list), "%s", st->args[0]);
		for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
			if (!parse_u64(tok, &v, true) || !v)
				BAD("exhaust: bad chunk '%s'", tok);
	} else if (!strcmp(op, "raw")) {
		if (!parse_cmd(st->args[0], &cmd))
			BAD("raw: bad command '%s'", st->args[0]);
		if (!is_name_ok(st->args[1]))
			BAD("raw: bad name '%s'", st->args[1]);
		if (!parse_u64(st->args[2], &v, true))
			BAD("raw: bad length '%s'", st->args[2]);
		if (!parse_u32(st->args[3], &v32))
			BAD("raw: bad flags '%s'", st->args[3]);
	} else if (!strcmp(op, "mmap")) {
		const char *o = st->args[0], *plus;

		if (o[0] == '@') {
			plus = strchr(o + 1, '+');
			if (plus == o + 1 || o[1] == 0 ||
			    (plus && !parse_u64(plus + 1, &v, true)))
				BAD("mmap: bad offset '%s'", o);
		} else if (!parse_u64(o, &v, true)) {
			BAD("mmap: bad offset '%s'", o);
		}
		if (!parse_u64(st->args[1], &v, true))
			BAD("mmap: bad length '%s'", st->args[1]);
	} else if (!strcmp(op, "sleep")) {
		if (!parse_u64(st->args[0], &v, false))
			BAD("sleep: bad milliseconds '%s'", st->args[0]);
	} else if (!strcmp(op, "bench")) {
		if (!parse_u64(st->args[0], &v, true) || !v)
			BAD("bench: bad size '%s'", st->args[0]);
		if (!parse_u64(st->args[1], &v, false) || !v || v > BENCH_MAX)
			BAD("bench: bad count '%s' (1..%d)", st->args[1], BENCH_MAX);
	} else if (!strcmp(op, "largest") || !strcmp(op, "fragtest")) {
		if (!parse_u64(st->args[0], &v, true) || !v)
			BAD("%s: bad size '%s'", op, st->args[0]);
	}
	if (st->backend == BACKEND_HEAP && !heap_has(op))
		BAD("%s: not a heap step (the heap backend has alloc, free, verify, write, check, exhaust, bench, largest, fragtest, heapinfo)", op);
	if (st->ptr && strcmp(op, "raw"))
		BAD("%s: ptr= is for raw only", op);
	if (st->priv && strcmp(op, "mmap"))
		BAD("%s: private is for mmap only", op);
	if (st->shows) {
		char kind[16];
		unsigned long long a1, a2;

		if (strcmp(op, "mmap"))
			BAD("%s: shows= is for mmap only", op);
		if (sscanf(st->shows, "%15[a-z]:%llu:%llu", kind, &a1, &a2) != 3 ||
		    (strcmp(kind, "pattern") && strcmp(kind, "seeded") && strcmp(kind, "zero")))
			BAD("mmap: shows= must be pattern:ID:OFFSET, seeded:SEED:OFFSET or zero:0:OFFSET, not '%s'",
			    st->shows);
	}
#undef BAD
	return NULL;
}

/* Words -> steps. Returns the count, or -1 after printing a usage record. */
static int parse_steps(char **w, int nw, struct step *steps, FILE *out)
{
	int i = 0, n = 0;

	while (i < nw) {
		struct step *st = &steps[n];
		const char *why;
		size_t k;

		memset(st, 0, sizeof(*st));
		for (k = 0; k < sizeof(ops) / sizeof(ops[0]); k++)
			if (!strcmp(ops[k].op, w[i]))
				break;
		if (k == sizeof(ops) / sizeof(ops[0])) {
			print_usage_record(out, "unknown step '%s'", w[i]);
			return -1;
		}
		st->op = ops[k].op;
		st->nargs = ops[k].nargs;
		st->backend = H.default_backend;
		if (i + 1 + st->nargs > nw) {
			print_usage_record(out, "%s needs %d argument(s)", st->op, st->nargs);
			return -1;
		}
		st->args = &w[i + 1];
		i += 1 + st->nargs;
		while (i < nw) {
			if (!strncmp(w[i], "expect=", 7)) {
				int e = parse_errno(w[i] + 7);

				if (e < 0) {
					print_usage_record(out, "unknown errno in '%s'", w[i]);
					return -1;
				}
				st->want = e;
				st->has_want = true;
			} else if (!strcmp(w[i], "ptr=bad")) {
				st->ptr = 1;
			} else if (!strcmp(w[i], "ptr=ro")) {
				st->ptr = 2;
			} else if (!strcmp(w[i], "backend=heap")) {
				st->backend = BACKEND_HEAP;
			} else if (!strcmp(w[i], "backend=driver")) {
				st->backend = BACKEND_DRIVER;
			} else if (!strncmp(w[i], "shows=", 6)) {
				st->shows = w[i] + 6;
			} else if (!strcmp(w[i], "private")) {
				st->priv = true;
			} else {
				break;
			}
			i++;
		}
		why = check_args(st);
		if (why) {
			print_usage_record(out, "%s", why);
			return -1;
		}
		n++;
	}
	if (n == 0) {
		print_usage_record(out, "no steps");
		return -1;
	}
	return n;
}

static void run_steps(struct step *steps, int n);

static int do_fork(struct step *rest, int nrest, struct rec *r)
{
	int status;
	pid_t pid;

	fflush(S.out);
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return errno;
	if (pid == 0) {
		S.child = true;
		S.failed = false;
		/* Only the server itself may keep its request FIFO alive. */
		if (S.req_fd >= 0) {
			close(S.req_fd);
			S.req_fd = -1;
		}
		run_steps(rest, nrest);
		fflush(S.out);
		_exit(S.failed ? 1 : 0);
	}
	rec_add(r, "pid=%d", (int)pid);
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			rec_msg(r, true, "waitpid: %s", strerror(errno));
			return 0;
		}
	}
	if (WIFEXITED(status)) {
		rec_add(r, "exit=%d", WEXITSTATUS(status));
		if (WEXITSTATUS(status))
			rec_msg(r, true, "child failed");
	} else if (WIFSIGNALED(status)) {
		rec_add(r, "signal=%d", WTERMSIG(status));
		rec_msg(r, true, "child killed by signal %d (%s)", WTERMSIG(status),
			strsignal(WTERMSIG(status)));
	}
	return 0;
}

static void run_steps(struct step *steps, int n)
{
	int i;

	for (i = 0; i < n && !S.exit_now; i++) {
		struct step *st = &steps[i];
		struct rec r;
		int step = ++S.step;
		int err = 0;

		memset(&r, 0, sizeof(r));
		if (st->backend == BACKEND_HEAP && !strcmp(st->op, "alloc"))
			err = heap_do_alloc(st, &r);
		else if (st->backend == BACKEND_HEAP && !strcmp(st->op, "free"))
			err = heap_do_free(st, &r);
		else if (st->backend == BACKEND_HEAP && !strcmp(st->op, "verify"))
			err = heap_do_mem(st, &r, MEM_VERIFY);
		else if (st->backend == BACKEND_HEAP && !strcmp(st->op, "write"))
			err = heap_do_mem(st, &r, MEM_WRITE);
		else if (st->backend == BACKEND_HEAP && !strcmp(st->op, "check"))
			err = heap_do_mem(st, &r, MEM_CHECK);
		else if (st->backend == BACKEND_HEAP && !strcmp(st->op, "exhaust"))
			err = heap_do_exhaust(st, &r);
		else if (!strcmp(st->op, "heapinfo"))
			err = heap_do_info(&r);
		else if (!strcmp(st->op, "bench"))
			err = do_bench(st, st->backend, &r);
		else if (!strcmp(st->op, "largest"))
			err = do_largest(st, st->backend, &r);
		else if (!strcmp(st->op, "fragtest"))
			err = do_fragtest(st, st->backend, &r);
		else if (!strcmp(st->op, "alloc"))
			err = do_alloc(st, &r);
		else if (!strcmp(st->op, "free"))
			err = do_free(st, &r);
		else if (!strcmp(st->op, "verify"))
			err = do_mem(st, &r, MEM_VERIFY);
		else if (!strcmp(st->op, "write"))
			err = do_mem(st, &r, MEM_WRITE);
		else if (!strcmp(st->op, "check"))
			err = do_mem(st, &r, MEM_CHECK);
		else if (!strcmp(st->op, "info"))
			err = do_info(st, &r);
		else if (!strcmp(st->op, "total"))
			err = do_total(&r);
		else if (!strcmp(st->op, "exhaust"))
			err = do_exhaust(st, &r);
		else if (!strcmp(st->op, "raw"))
			err = do_raw(st, &r);
		else if (!strcmp(st->op, "mmap"))
			err = do_mmap(st, &r);
		else if (!strcmp(st->op, "sleep"))
			err = do_sleep(st, &r);
		else if (!strcmp(st->op, "close"))
			err = do_close(&r);
		else if (!strcmp(st->op, "exit"))
			S.exit_now = true;
		else if (!strcmp(st->op, "fork")) {
			/* The rest of the line belongs to the child. */
			err = do_fork(steps + i + 1, n - i - 1, &r);
			emit(st, step, err, &r);
			return;
		}
		emit(st, step, err, &r);
	}
}

/* Parse and run one list of steps; returns the exit status. */
static int run_words(char **w, int nw)
{
	struct step *steps = calloc((size_t)nw + 1, sizeof(*steps));
	int n;

	if (!steps) {
		print_usage_record(S.out, "out of memory");
		return 1;
	}
	/* A leading "--backend heap|driver": the default for this line's steps. */
	H.default_backend = BACKEND_DRIVER;
	if (nw >= 2 && !strcmp(w[0], "--backend")) {
		if (strcmp(w[1], "heap") && strcmp(w[1], "driver")) {
			print_usage_record(S.out, "--backend must be heap or driver, not '%s'", w[1]);
			free(steps);
			return 2;
		}
		H.default_backend = !strcmp(w[1], "heap") ? BACKEND_HEAP : BACKEND_DRIVER;
		w += 2;
		nw -= 2;
	}
	n = parse_steps(w, nw, steps, S.out);
	if (n < 0) {
		free(steps);
		return 2;
	}
	S.step = 0;
	S.failed = false;
	if (S.ktap)
		fprintf(S.out, "KTAP version 1\n1..%d\n", n);
	run_steps(steps, n);
	free(steps);
	return S.failed ? 1 : 0;
}

/* ---- server ----------------------------------------------------------- */

/*
 * Servers talk over FIFOs in RUN_DIR, which need only a RAM file system
 * (no CONFIG_NET, no CONFIG_UNIX, no file locks). For server PROC:
 *
 *   PROC.in         request FIFO. The server keeps it open for reading (and
 *                   writing, so it never sees end-of-file) for its whole life.
 *                   A client writes one line "CLIENTPID\n" per request: shorter
 *                   than PIPE_BUF, so lines of concurrent clients never mix.
 *   PROC.CPID.req   the request: the steps as one line, a regular file the
 *                   client writes completely before it sends CLIENTPID.
 *   PROC.CPID.out   the reply FIFO, opened for reading by the client before
 *                   it sends CLIENTPID; the server writes the records into it
 *                   and closes it when the request is done.
 *
 * Liveness comes from the FIFO itself: opening PROC.in for writing with
 * O_NONBLOCK fails with ENXIO when no process has it open for reading, i.e.
 * the server exited or was killed (even if it is an unreaped zombie), and a
 * client's open write end of PROC.in polls POLLERR the moment its last
 * reader goes away. The server takes requests one at a time, in order; it
 * opens a reply FIFO with O_NONBLOCK, so a client that died before its turn
 * (no reader) is skipped instead of hanging the server, and one that dies
 * mid-request only makes the server's writes fail with EPIPE.
 */

#define REQ_FIFO_FMT RUN_DIR "/%s.in"
#define CLIENT_FMT RUN_DIR "/%s.%d.%s"

static bool proc_name_ok(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > 64)
		return false;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("_.-", s[i]))
			return false;
	return s[0] != '.';
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t k = write(fd, buf, len);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += k;
		len -= (size_t)k;
	}
	return 0;
}

/* Tells the waiting "serve" parent how the start went, then closes the pipe. */
static void report_start(int fd, int err, const char *msg)
{
	char line[300];

	snprintf(line, sizeof(line), "%d %d %s\n", err, (int)getpid(), msg);
	write_all(fd, line, strlen(line));
	close(fd);
}

/* The whole request file as one line (without its newline); NULL if unreadable. */
static char *read_request(const char *path)
{
	char *buf = malloc(MAX_LINE + 1);
	size_t n = 0;
	int fd;

	if (!buf)
		return NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		free(buf);
		return NULL;
	}
	while (n < MAX_LINE) {
		ssize_t k = read(fd, buf + n, MAX_LINE - n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	buf[n] = 0;
	if (strchr(buf, '\n'))
		*strchr(buf, '\n') = 0;
	return buf;
}

static int split_words(char *line, char **w, int max)
{
	int n = 0;
	char *save = NULL, *tok;

	for (tok = strtok_r(line, " \t\r", &save); tok && n < max;
	     tok = strtok_r(NULL, " \t\r", &save))
		w[n++] = tok;
	return n;
}

/* One request from client cpid: open its reply FIFO, run its steps, close. */
static void serve_request(const char *proc, int cpid)
{
	static char *w[MAX_WORDS];
	char req[PATH_MAX], reply[PATH_MAX];
	char *line;
	FILE *out;
	int ofd;

	snprintf(req, sizeof(req), CLIENT_FMT, proc, cpid, "req");
	snprintf(reply, sizeof(reply), CLIENT_FMT, proc, cpid, "out");
	/* No reader: the client is gone (killed while queued). Never block on it. */
	ofd = open(reply, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (ofd < 0) {
		unlink(req);
		unlink(reply);
		return;
	}
	/* Blocking from now on: a slow reader must not lose records to EAGAIN. */
	fcntl(ofd, F_SETFL, fcntl(ofd, F_GETFL) & ~O_NONBLOCK);
	line = read_request(req);
	unlink(req);
	unlink(reply);
	out = fdopen(ofd, "w");
	if (!out) {
		close(ofd);
		free(line);
		return;
	}
	S.out = out;
	if (!line)
		print_usage_record(out, "no request file %s", req);
	else
		run_words(w, split_words(line, w, MAX_WORDS));
	free(line);
	if (S.exit_now)
		drop_request_fifo();
	fclose(out);
	S.out = NULL;
}

static void serve_loop(const char *proc, const char *path)
{
	static char buf[4096];
	size_t n = 0;
	struct stat mine;

	fstat(S.req_fd, &mine);
	S.req_path = path;
	S.req_st = mine;
	while (!S.exit_now) {
		ssize_t k = read(S.req_fd, buf + n, sizeof(buf) - 1 - n);
		char *nl, *end;
		long cpid;

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
		while (!S.exit_now && (nl = memchr(buf, '\n', n))) {
			*nl = 0;
			errno = 0;
			cpid = strtol(buf, &end, 10);
			if (!errno && end != buf && !*end && cpid > 0 && cpid < INT32_MAX)
				serve_request(proc, (int)cpid);
			n -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, n);
		}
		if (n == sizeof(buf) - 1)
			n = 0;	/* garbage without a newline: drop it */
	}
	drop_request_fifo();
	close(S.req_fd);
	exit(0);
}

/*
 * Become server PROC: create its request FIFO under a private name, open it,
 * then link() it to PROC.in, which fails if that name exists. An existing
 * PROC.in with a reader is a live server (EADDRINUSE); without one it is left
 * over from a server that died, and is replaced.
 */
static int claim_name(const char *proc, const char *path, const char **what)
{
	char tmp[PATH_MAX];
	int fd, probe, tries, e;

	snprintf(tmp, sizeof(tmp), RUN_DIR "/.%s.in.%d", proc, (int)getpid());
	unlink(tmp);
	*what = "cannot create the request FIFO";
	if (mkfifo(tmp, 0600) < 0)
		return -errno;
	fd = open(tmp, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		e = errno;
		unlink(tmp);
		return -e;
	}
	for (tries = 0; tries < 5; tries++) {
		if (link(tmp, path) == 0) {
			unlink(tmp);
			return fd;
		}
		if (errno != EEXIST)
			break;
		probe = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
		if (probe >= 0) {
			struct stat st;
			bool fifo = fstat(probe, &st) == 0 && S_ISFIFO(st.st_mode);

			close(probe);
			if (fifo) {
				*what = "a server of that name is running";
				errno = EADDRINUSE;
				break;
			}
		} else if (errno != ENXIO && errno != ENOENT) {
			break;
		}
		unlink(path);	/* left over from a dead server (or not a FIFO) */
	}
	e = errno;
	close(fd);
	unlink(tmp);
	return -e;
}

/*
 * RUN_DIR/PROC.pid: the pid of the server last started as PROC, for "ctl ::!kill PROC" and
 * "::!exit PROC" (a command that starts and ends a server need not wait for its pid to
 * travel to the host and back). Written by the starter once the server listens.
 */
#define PID_FILE_FMT RUN_DIR "/%s.pid"

static void write_pid_file(const char *proc, int pid)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), PID_FILE_FMT, proc);
	f = fopen(path, "we");
	if (f) {
		fprintf(f, "%d\n", pid);
		fclose(f);
	}
}

static int read_pid_file(const char *proc)
{
	char path[PATH_MAX];
	FILE *f;
	int pid = 0;

	snprintf(path, sizeof(path), PID_FILE_FMT, proc);
	f = fopen(path, "re");
	if (f) {
		if (fscanf(f, "%d", &pid) != 1)
			pid = 0;
		fclose(f);
	}
	return pid;
}

static int cmd_serve(const char *proc)
{
	char path[PATH_MAX];
	int pfd[2], status;
	char buf[400];
	size_t n = 0;
	pid_t pid;

	if (!proc_name_ok(proc)) {
		print_usage_record(stdout, "bad server name '%s'", proc);
		return 2;
	}
	snprintf(path, sizeof(path), REQ_FIFO_FMT, proc);
	if ((mkdir("/run", 0755) < 0 && errno != EEXIST) ||
	    (mkdir(RUN_DIR, 0700) < 0 && errno != EEXIST)) {
		int e = errno;

		printf("@cma op=serve status=fail errno=%s name=%s msg=mkdir %s: %s\n",
		       errname(e), proc, RUN_DIR, strerror(e));
		return 1;
	}
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		perror("pipe");
		return 1;
	}
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) {
		/* First child: new session, fork the server, go. */
		const char *what;
		int devnull;

		close(pfd[0]);
		setsid();
		pid = fork();
		if (pid < 0) {
			report_start(pfd[1], errno, "fork failed");
			_exit(1);
		}
		if (pid > 0)
			_exit(0);

		/* The server. */
		if (chdir("/") < 0) {
			/* not fatal: the server uses absolute paths only */
		}
		signal(SIGPIPE, SIG_IGN);
		S.req_fd = claim_name(proc, path, &what);
		if (S.req_fd < 0) {
			report_start(pfd[1], -S.req_fd, what);
			_exit(1);
		}
		devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
			if (devnull > 2)
				close(devnull);
		}
		report_start(pfd[1], 0, "listening");
		serve_loop(proc, path);
	}

	/* The caller: wait until the server listens (or says why not). */
	close(pfd[1]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	for (;;) {
		ssize_t k = read(pfd[0], buf + n, sizeof(buf) - 1 - n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
		if (n == sizeof(buf) - 1)
			break;
	}
	close(pfd[0]);
	buf[n] = 0;
	{
		int err = 0, spid = 0, off = 0;
		char *nl = strchr(buf, '\n');

		if (nl)
			*nl = 0;
		if (n == 0 || sscanf(buf, "%d %d %n", &err, &spid, &off) < 2) {
			printf("@cma op=serve status=fail errno=ECHILD name=%s msg=server died before listening\n",
			       proc);
			return 1;
		}
		if (err) {
			printf("@cma op=serve status=fail errno=%s name=%s msg=%s: %s\n",
			       errname(err), proc, buf + off, strerror(err));
			return 1;
		}
		printf("@cma op=serve status=ok name=%s pid=%d\n", proc, spid);
		write_pid_file(proc, spid);
	}
	fflush(stdout);
	return 0;
}

static int ctl_unreachable(FILE *out, const char *proc, int e, const char *why)
{
	fprintf(out, "@cma op=ctl status=fail errno=%s name=%s msg=cannot reach server %s: %s\n",
	       errname(e), proc, proc, why ? why : strerror(e));
	return 1;
}

/* Write the request file: the steps as one line. */
static int write_request(const char *path, char **w, int nw)
{
	size_t len = 0;
	char *line, *p;
	int fd, i, e = 0;

	for (i = 0; i < nw; i++)
		len += strlen(w[i]) + 1;
	line = malloc(len + 1);
	if (!line)
		return ENOMEM;
	for (i = 0, p = line; i < nw; i++)
		p += sprintf(p, "%s%s", i ? " " : "", w[i]);
	strcpy(p, "\n");
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || write_all(fd, line, strlen(line)) < 0)
		e = errno;
	if (fd >= 0 && close(fd) < 0 && !e)
		e = errno;
	free(line);
	return e;
}

static int ctl_request(const char *proc, char **w, int nw, FILE *out)
{
	char path[PATH_MAX], req[PATH_MAX], reply[PATH_MAX], note[32];
	char *buf = NULL;
	size_t cap = 0, n = 0;
	int rfd, ofd, e, rc = 0, records = 0;
	bool server_gone = false;
	struct stat st;
	int me = (int)getpid();

	if (!proc_name_ok(proc)) {
		print_usage_record(out, "bad server name '%s'", proc);
		return 2;
	}
	if (nw == 0) {
		print_usage_record(out, "ctl %s: no steps", proc);
		return 2;
	}
	snprintf(path, sizeof(path), REQ_FIFO_FMT, proc);
	snprintf(req, sizeof(req), CLIENT_FMT, proc, me, "req");
	snprintf(reply, sizeof(reply), CLIENT_FMT, proc, me, "out");
	signal(SIGPIPE, SIG_IGN);

	/* ENOENT: never started (or exited cleanly); ENXIO: nobody reads it, the server died. */
	rfd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (rfd < 0) {
		char why[PATH_MAX + 100];

		e = errno;
		snprintf(why, sizeof(why), "%s (nothing reads %s: the server exited or was killed)",
			 strerror(e), path);
		return ctl_unreachable(out, proc, e, e == ENXIO ? why : NULL);
	}
	if (fstat(rfd, &st) < 0 || !S_ISFIFO(st.st_mode)) {
		close(rfd);
		return ctl_unreachable(out, proc, EINVAL, "its request file is not a FIFO");
	}
	e = write_request(req, w, nw);
	if (!e) {
		unlink(reply);
		if (mkfifo(reply, 0600) < 0)
			e = errno;
	}
	ofd = e ? -1 : open(reply, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (!e && ofd < 0)
		e = errno;
	if (e) {
		fprintf(out, "@cma op=ctl status=fail errno=%s name=%s msg=cannot create the request files in %s: %s\n",
		       errname(e), proc, RUN_DIR, strerror(e));
		close(rfd);
		unlink(req);
		unlink(reply);
		return 1;
	}
	/* The request itself: one short line, atomic on a FIFO. */
	snprintf(note, sizeof(note), "%d\n", me);
	for (;;) {
		ssize_t k = write(rfd, note, strlen(note));

		if (k == (ssize_t)strlen(note))
			break;
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN) {	/* queue full: wait for room */
			struct pollfd p = { .fd = rfd, .events = POLLOUT };

			poll(&p, 1, 100);
			continue;
		}
		e = k < 0 ? errno : EIO;
		close(rfd);
		close(ofd);
		unlink(req);
		unlink(reply);
		return ctl_unreachable(out, proc, e, e == EPIPE ? "it exited before taking the request" : NULL);
	}

	/*
	 * Relay the records line by line as they come. The reply FIFO polls
	 * POLLIN/POLLHUP only once the server has opened it; until then the
	 * request FIFO's POLLERR says the server died (no reader left).
	 */
	for (;;) {
		struct pollfd p[2] = {
			{ .fd = ofd, .events = POLLIN },
			{ .fd = rfd, .events = 0 },
		};
		ssize_t k;
		char *nl;
		bool eof = false;

		if (poll(p, server_gone ? 1 : 2, server_gone ? 0 : -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (!p[0].revents) {
			if (server_gone)
				break;	/* nothing came after the server died */
			if (p[1].revents & (POLLERR | POLLHUP | POLLNVAL))
				server_gone = true;	/* one last look at the reply FIFO */
			continue;
		}
		if (cap - n < 4096) {
			cap = cap ? 2 * cap : 65536;
			buf = realloc(buf, cap);
			if (!buf)
				return 1;
		}
		k = read(ofd, buf + n, cap - n - 1);
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k <= 0) {
			eof = true;
			if (n) {	/* last line without a newline */
				buf[n++] = '\n';
			}
			k = 0;
		}
		n += (size_t)k;
		while ((nl = memchr(buf, '\n', n))) {
			size_t ll = (size_t)(nl - buf) + 1;

			fwrite(buf, 1, ll, out);
			fflush(out);
			if (!strncmp(buf, "@cma ", 5)) {
				records++;
				*nl = 0;
				if (strstr(buf, " op=usage "))
					rc = 2;
				else if (strstr(buf, " status=fail") && rc == 0)
					rc = 1;
			}
			memmove(buf, buf + ll, n - ll);
			n -= ll;
		}
		if (eof)
			break;
	}
	free(buf);
	if (!records && !server_gone) {
		struct pollfd p = { .fd = rfd, .events = 0 };

		server_gone = poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP));
	}
	close(ofd);
	close(rfd);
	unlink(req);
	unlink(reply);
	if (!records) {
		fprintf(out, "@cma op=ctl status=fail errno=EPROTO name=%s msg=no reply from server %s%s\n",
		       proc, proc, server_gone ? " (it exited or was killed before answering)" : "");
		return 1;
	}
	return rc;
}

/* ---- several servers and guest actions in one command ---------------- */

/*
 * "ctl PROC STEP... ::PROC2 STEP... ::!kill PID ..." runs its parts in order,
 * each after a line "@part" (so a caller can split the output), in one guest
 * command: the fuzzer's whole round costs one round trip instead of one per
 * process switch. Parts:
 *   ::PROC STEP...     a request to server PROC (as "ctl PROC STEP...")
 *   ::!serve PROC      start server PROC (as "serve PROC", its record included)
 *   ::!exit PROC       ask server PROC to exit, then wait until it is gone
 *   ::!kill PROC       SIGKILL server PROC, then wait until it is gone
 *   ::!rmmod MODULE    delete_module(MODULE, O_NONBLOCK)
 *   ::!insmod PATH     finit_module(PATH, no parameters)
 *   ::!cat PATH        print the file (the driver's debugfs block list), then the record
 * The other guest actions print one record: "@cma op=guest action=A status=ok|fail errno=E"
 * (exit and kill: ESRCH when no server of that name was started).
 * "Gone" is what the driver needs: the process exited or is a zombie (its files,
 * /dev/cma_mem included, are closed), as the shell's wait_gone() means it.
 */
static bool pid_gone(int pid)
{
	char path[64], buf[512], *rp;
	int fd;
	ssize_t k;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return true;
	k = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (k <= 0)
		return true;
	buf[k] = 0;
	rp = strrchr(buf, ')');	/* the command name may hold spaces and ')' */
	return !rp || rp[1] != ' ' || rp[2] == 'Z' || rp[2] == 'X';
}

static void wait_pid_gone(int pid)
{
	const struct timespec tick = { .tv_sec = 0, .tv_nsec = 1000000 };

	while (!pid_gone(pid))
		nanosleep(&tick, NULL);
}

static int guest_action(char **w, int nw)
{
	const char *a = w[0] + 3;	/* after "::!" */
	int err = 0, fd, pid;

	if (!strcmp(a, "serve") && nw == 2) {
		/* Prints its own record, "@cma op=serve ... pid=N", as "cma_test serve PROC" does. */
		fflush(stdout);
		return cmd_serve(w[1]);
	}
	if ((!strcmp(a, "kill") || !strcmp(a, "exit")) && nw == 2) {
		if (!proc_name_ok(w[1])) {
			print_usage_record(stdout, "::!%s: bad server name '%s'", a, w[1]);
			return 2;
		}
		pid = read_pid_file(w[1]);
		if (pid <= 1) {
			err = ESRCH;
		} else if (!strcmp(a, "kill")) {
			if (kill((pid_t)pid, SIGKILL) < 0 && errno != ESRCH)
				err = errno;
		} else {
			char *bye[] = { "exit" };
			FILE *null = fopen("/dev/null", "w");

			/* The server's reply to "exit" is not this part's output. */
			if (!null)
				err = errno;
			else {
				ctl_request(w[1], bye, 1, null);
				fclose(null);
			}
		}
		if (!err)
			wait_pid_gone(pid);
		if (!err && !strcmp(a, "kill")) {
			char path[PATH_MAX];

			snprintf(path, sizeof(path), PID_FILE_FMT, w[1]);
			unlink(path);	/* a killed server cannot remove it (nor its FIFO: the next serve does) */
		}
	} else if (!strcmp(a, "cat") && nw == 2) {
		/* The file's text verbatim (a debugfs listing), then the record. */
		char chunk[4096];
		ssize_t k;

		fd = open(w[1], O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			err = errno;
		} else {
			fflush(stdout);
			while ((k = read(fd, chunk, sizeof(chunk))) > 0)
				fwrite(chunk, 1, (size_t)k, stdout);
			if (k < 0)
				err = errno;
			close(fd);
		}
	} else if (!strcmp(a, "rmmod") && nw == 2) {
		if (syscall(SYS_delete_module, w[1], O_NONBLOCK) < 0)
			err = errno;
	} else if (!strcmp(a, "insmod") && nw == 2) {
		fd = open(w[1], O_RDONLY | O_CLOEXEC);
		if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) < 0)
			err = errno;
		if (fd >= 0)
			close(fd);
	} else {
		print_usage_record(stdout, "unknown guest action '%s' with %d argument(s)", w[0], nw - 1);
		return 2;
	}
	printf("@cma op=guest action=%s status=%s errno=%s\n", a, err ? "fail" : "ok", errname(err));
	return err ? 1 : 0;
}

static int cmd_ctl(const char *proc, char **w, int nw)
{
	int i, start = 0, rc = 0;
	const char *cur = proc;
	bool multi = false;

	for (i = 0; i < nw && !multi; i++)
		multi = !strncmp(w[i], "::", 2);
	if (!multi)
		return ctl_request(proc, w, nw, stdout);
	for (i = 0; i <= nw; i++) {
		int part;

		if (i < nw && strncmp(w[i], "::", 2))
			continue;
		/* w[start..i) is one part, addressed to cur (or a guest action) */
		if (cur && !(i == 0 && cur == proc)) {	/* "ctl P ::Q ...": P has no part */
			printf("@part\n");
			fflush(stdout);
			part = cur[0] == '!' ? guest_action(w + start - 1, i - start + 1)
					     : ctl_request(cur, w + start, i - start, stdout);
			if (part > rc)
				rc = part;
			fflush(stdout);
		}
		if (i < nw) {
			cur = w[i] + 2;
			start = i + 1;
		}
	}
	return rc;
}

int main(int argc, char **argv)
{
	S.out = stdout;
	S.pagesize = sysconf(_SC_PAGESIZE);
	install_fault_handler();

	if (argc < 2) {
		print_usage_record(stdout,
				   "usage: cma_test STEP... | cma_test serve PROC | cma_test ctl PROC STEP...");
		return 2;
	}
	if (!strcmp(argv[1], "serve")) {
		if (argc != 3) {
			print_usage_record(stdout, "usage: cma_test serve PROC");
			return 2;
		}
		return cmd_serve(argv[2]);
	}
	if (!strcmp(argv[1], "ctl")) {
		if (argc < 3) {
			print_usage_record(stdout, "usage: cma_test ctl PROC STEP...");
			return 2;
		}
		return cmd_ctl(argv[2], argv + 3, argc - 3);
	}
	if (!strcmp(argv[1], "--ktap")) {
		/* kselftest style: one test point per step, records as diagnostics. */
		S.ktap = true;
		return run_words(argv + 2, argc - 2);
	}
	return run_words(argv + 1, argc - 1);
}
