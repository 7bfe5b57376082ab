// SPDX-License-Identifier: GPL-2.0
/*
 * cma_mem: hand out physically contiguous buffers from the CMA area to user
 * space through /dev/cma_mem.
 *
 * CMEM_ALLOCATE allocates a buffer with the DMA API (write-combine or
 * coherent), maps it into the caller with vm_mmap() on the same file (which
 * lands in cma_mem_mmap()) and returns the physical and user addresses.
 * CMEM_UNMAP unmaps and frees it by name. The ABI is described only in
 * include/uapi/linux/cma_mem.h.
 *
 * Ownership: a block belongs to the open file it was allocated on and to
 * the thread group that allocated it. Name lookups only see the caller's
 * file; a different thread group sharing that file (a forked child) gets
 * -EPERM.
 *
 * Lifetime: every block is reference counted. The file's list holds one
 * reference, every VMA mapping the block holds one, and an ioctl in flight
 * holds one. The DMA memory is freed when the last reference goes, so user
 * space can never keep a mapping of pages that went back to the allocator.
 *
 * Locking: cma_mem_lock protects both block lists, the counters and the
 * per-file state. The mmap handler and the VMA close handler run under
 * mmap_lock and take cma_mem_lock, so the order is mmap_lock -> cma_mem_lock.
 * The ioctl path therefore never holds cma_mem_lock across vm_mmap(),
 * vm_munmap(), mmap_read_lock() or copy_{from,to}_user() (a fault takes
 * mmap_lock), and never drops a block reference while holding it (the last
 * put takes it).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/build_bug.h>
#include <linux/debugfs.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmzone.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nodemask.h>
#include <linux/pageblock-flags.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>

/*
 * The ABI header lives next to this file; include it by relative path so a
 * header of the same name in the kernel tree can never shadow it.
 */
#include "include/uapi/linux/cma_mem.h"

#ifndef CONFIG_CMA
#error "cma_mem needs a kernel with CONFIG_CMA (and CONFIG_DMA_CMA)"
#endif

/*
 * cma_mem_pfn_migratetype() below reads the pageblock bitmap directly, in
 * the layout of Linux 5.9 .. 6.1 (mm/page_alloc.c get_pfnblock_flags_mask()).
 * Re-check it before building for anything newer.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 9, 0) || \
	LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
#error "cma_mem: pageblock lookup written for Linux 5.9..6.1; re-check it"
#endif

/* dump_mem records must start with "dump_mem:", without the pr_fmt prefix. */
#define dump_mem_line(fmt, ...) printk(KERN_INFO "dump_mem:" fmt "\n", ##__VA_ARGS__)

/*
 * mmap offsets ("cookies") handed out per file: offset + length must stay
 * below ULONG_MAX (vm_mmap() takes a byte offset, and file_mmap_ok() caps
 * a character device there), and within reach of a 32-bit caller's
 * mmap2() page offset (2^32 pages = 16 TiB).
 */
#define CMA_MEM_COOKIE_LIMIT \
	(BITS_PER_LONG == 32 ? (u64)(ULONG_MAX - PAGE_SIZE + 1) : 1ULL << 44)

static bool test_pattern = true;
module_param(test_pattern, bool, 0644);
MODULE_PARM_DESC(test_pattern,
		 "fill new blocks with cma_mem_pattern_byte(id, offset) (default 1)");

/* One open of /dev/cma_mem. */
struct cma_mem_file {
	struct list_head blocks;	/* cma_mem_buf.file_node, by name */
	u64 next_offset;		/* where the next cookie search starts */
};

/* One block. (struct cma_mem_block is the uapi struct.) */
struct cma_mem_buf {
	struct kref ref;
	struct list_head file_node;	/* on cma_mem_file.blocks; empty once freed by name */
	struct list_head global_node;	/* on cma_mem_all until the memory is freed */
	struct pid *owner;		/* thread group that allocated it */
	char name[CMA_MEM_NAME_LEN];
	u32 id;
	bool wc;			/* dma_alloc_wc (else dma_alloc_coherent) */
	u64 offset;			/* mmap cookie on the owning file */
	u64 len;			/* page-aligned length visible to user space */
	size_t alloc_size;		/* what was asked from the DMA API (>= len) */
	void *vaddr;			/* kernel address: never leaves the kernel */
	dma_addr_t dma;
	unsigned long user_addr;	/* mapping made by CMEM_ALLOCATE, 0 if none */
	atomic_t maps;			/* VMAs mapping this block */
};

static struct miscdevice cma_mem_misc;
static struct device *cma_mem_dev;	/* misc this_device, referenced */
static DEFINE_MUTEX(cma_mem_lock);
static LIST_HEAD(cma_mem_all);		/* every block whose memory is allocated */
static u64 cma_mem_used;		/* sum of len over cma_mem_all (a one-page
					 * block really holds two pages, see
					 * alloc_size) */
static u32 cma_mem_nblocks;		/* entries on cma_mem_all */
static u32 cma_mem_last_id;
static u64 cma_mem_total;		/* bytes of CMA found at load time */
static phys_addr_t cma_mem_lo, cma_mem_hi; /* span of the CMA pageblocks */
static bool cma_mem_dev_ready;		/* DMA mask set: open() may succeed */
static struct dentry *cma_mem_debugfs;

static const struct vm_operations_struct cma_mem_vm_ops;

/*
 * Where does the CMA area lie?
 *
 * Nothing of CMA is exported to modules on Debian's 6.1 kernels: not
 * dma_contiguous_default_area, cma_get_size(), cma_for_each_area(),
 * totalcma_pages nor get_pfnblock_flags_mask(). What is exported is the
 * memory model (mem_section / mem_map, node_data / contig_page_data,
 * pfn_valid): enough to read a pageblock's migrate type the way
 * get_pfnblock_flags_mask() does. CMA pageblocks keep MIGRATE_CMA for the
 * life of the system (MIGRATE_ISOLATE while alloc_contig_range() works on
 * them), so they tell both the size of CMA and whether a buffer the DMA
 * API returned really came from it: dma-direct silently falls back to the
 * page allocator when CMA is full, and such a buffer must not be handed
 * out as CMA memory.
 */
static unsigned long cma_mem_pfn_migratetype(unsigned long pfn)
{
	unsigned long *bitmap;
	unsigned long bitidx;

#ifdef CONFIG_SPARSEMEM
	bitmap = section_to_usemap(__pfn_to_section(pfn));
	bitidx = (pfn & (PAGES_PER_SECTION - 1)) >> pageblock_order;
#else
	struct zone *zone = page_zone(pfn_to_page(pfn));

	bitmap = zone->pageblock_flags;
	bitidx = (pfn - round_down(zone->zone_start_pfn, pageblock_nr_pages)) >>
		 pageblock_order;
#endif
	bitidx *= NR_PAGEBLOCK_BITS;
	return (READ_ONCE(bitmap[bitidx / BITS_PER_LONG]) >>
		(bitidx % BITS_PER_LONG)) & MIGRATETYPE_MASK;
}

/* Does every pageblock under [phys, phys + size) belong to CMA? */
static bool cma_mem_range_is_cma(phys_addr_t phys, size_t size)
{
	unsigned long pfn = PHYS_PFN(phys);
	unsigned long last = PHYS_PFN(phys + size - 1);

	for (; pfn <= last; pfn = pageblock_end_pfn(pfn)) {
		unsigned long mt;

		if (!pfn_valid(pfn))
			return false;
		mt = cma_mem_pfn_migratetype(pfn);
		if (mt != MIGRATE_CMA && mt != MIGRATE_ISOLATE)
			return false;
	}
	return true;
}

/*
 * Count the CMA pageblocks of all online nodes: the same number as
 * CmaTotal in /proc/meminfo. That is the default area the DMA API
 * allocates from, plus any device-specific area a device tree reserved
 * (none on QEMU's virt machine).
 */
static void __init cma_mem_find_cma(void)
{
	int nid;

	for_each_online_node(nid) {
		pg_data_t *pgdat = NODE_DATA(nid);
		int z;

		for (z = 0; z < MAX_NR_ZONES; z++) {
			struct zone *zone = &pgdat->node_zones[z];
			unsigned long pfn;

			if (!populated_zone(zone))
				continue;
			for (pfn = pageblock_align(zone->zone_start_pfn);
			     pfn < zone_end_pfn(zone);
			     pfn += pageblock_nr_pages) {
				if (!pfn_valid(pfn) ||
				    page_zone(pfn_to_page(pfn)) != zone ||
				    cma_mem_pfn_migratetype(pfn) != MIGRATE_CMA)
					continue;
				if (!cma_mem_total || PFN_PHYS(pfn) < cma_mem_lo)
					cma_mem_lo = PFN_PHYS(pfn);
				if (PFN_PHYS(pfn + pageblock_nr_pages) > cma_mem_hi)
					cma_mem_hi = PFN_PHYS(pfn + pageblock_nr_pages);
				cma_mem_total += (u64)pageblock_nr_pages << PAGE_SHIFT;
			}
			cond_resched();
		}
	}
}

/* ---- blocks ---------------------------------------------------------- */

static void cma_mem_buf_free_memory(struct cma_mem_buf *buf)
{
	struct device *dev = cma_mem_dev;

	/* Free with the allocator's own counterpart, never the other one. */
	if (buf->wc)
		dma_free_wc(dev, buf->alloc_size, buf->vaddr, buf->dma);
	else
		dma_free_coherent(dev, buf->alloc_size, buf->vaddr, buf->dma);
	put_pid(buf->owner);
	kfree(buf);
}

/* kref release: the last user is gone. Takes cma_mem_lock. */
static void cma_mem_buf_release(struct kref *ref)
{
	struct cma_mem_buf *buf = container_of(ref, struct cma_mem_buf, ref);

	mutex_lock(&cma_mem_lock);
	list_del(&buf->global_node);
	cma_mem_used -= buf->len;
	cma_mem_nblocks--;
	mutex_unlock(&cma_mem_lock);

	pr_debug("freeing block id %u\n", buf->id);
	cma_mem_buf_free_memory(buf);
}

static void cma_mem_buf_put(struct cma_mem_buf *buf)
{
	lockdep_assert_not_held(&cma_mem_lock);
	kref_put(&buf->ref, cma_mem_buf_release);
}

static bool cma_mem_is_owner(const struct cma_mem_buf *buf)
{
	return buf->owner == task_tgid(current);
}

/* Caller holds cma_mem_lock. */
static struct cma_mem_buf *cma_mem_find_name(struct cma_mem_file *cf,
					     const char *name)
{
	struct cma_mem_buf *buf;

	lockdep_assert_held(&cma_mem_lock);
	list_for_each_entry(buf, &cf->blocks, file_node)
		if (!strcmp(buf->name, name))
			return buf;
	return NULL;
}

/* Caller holds cma_mem_lock. */
static struct cma_mem_buf *cma_mem_find_offset(struct cma_mem_file *cf, u64 off)
{
	struct cma_mem_buf *buf;

	lockdep_assert_held(&cma_mem_lock);
	list_for_each_entry(buf, &cf->blocks, file_node)
		if (off >= buf->offset && off - buf->offset < buf->len)
			return buf;
	return NULL;
}

/*
 * Pick a free range of @len bytes in this file's mmap offset space,
 * first fit from where the last search ended, so offsets of freed blocks
 * are reused only after the space has wrapped. Caller holds cma_mem_lock.
 */
static int cma_mem_pick_offset(struct cma_mem_file *cf, u64 len, u64 *out)
{
	struct cma_mem_buf *buf;
	bool wrapped = false;
	u64 cand = cf->next_offset;

	lockdep_assert_held(&cma_mem_lock);
again:
	if (cand > CMA_MEM_COOKIE_LIMIT - len) {
		if (wrapped)
			return -ENOSPC;
		wrapped = true;
		cand = 0;
	}
	list_for_each_entry(buf, &cf->blocks, file_node) {
		if (cand < buf->offset + buf->len && buf->offset < cand + len) {
			cand = buf->offset + buf->len;
			goto again;
		}
	}
	*out = cand;
	cf->next_offset = cand + len;
	return 0;
}

/*
 * Take @buf off its file's list if it is still there. Returns true if the
 * caller now owns the list's reference (and must put it).
 */
static bool cma_mem_unlist(struct cma_mem_buf *buf)
{
	bool listed;

	mutex_lock(&cma_mem_lock);
	listed = !list_empty(&buf->file_node);
	if (listed)
		list_del_init(&buf->file_node);
	mutex_unlock(&cma_mem_lock);
	return listed;
}

/*
 * Unmap from the current mm whatever part of [addr, addr + buf->len) is
 * still a mapping of @buf. User space may have unmapped, split or replaced
 * that range since CMEM_ALLOCATE mapped it; only VMAs that still belong to
 * this block are removed, anything else there is left alone.
 */
static void cma_mem_unmap_user(struct cma_mem_buf *buf, unsigned long addr)
{
	struct mm_struct *mm = current->mm;
	unsigned long end = addr + buf->len;

	lockdep_assert_not_held(&cma_mem_lock);
	if (!mm)
		return;
	while (addr < end) {
		struct vm_area_struct *vma;
		unsigned long start, stop;
		bool ours;

		mmap_read_lock(mm);
		vma = find_vma_intersection(mm, addr, end);
		if (!vma) {
			mmap_read_unlock(mm);
			break;
		}
		start = max(addr, vma->vm_start);
		stop = min(end, vma->vm_end);
		ours = vma->vm_ops == &cma_mem_vm_ops &&
		       vma->vm_private_data == buf;
		mmap_read_unlock(mm);

		if (ours)
			vm_munmap(start, stop - start);
		addr = stop;
	}
}

static void cma_mem_fill_pattern(struct cma_mem_buf *buf)
{
	u64 *p = buf->vaddr;
	u64 off;

	/* 64-bit stores: the kernel mapping is write-combine or uncached. */
	for (off = 0; off < buf->len; off += sizeof(u64)) {
		u64 word = 0;
		int i;

		for (i = 0; i < sizeof(u64); i++)
			word |= (u64)cma_mem_pattern_byte(buf->id, off + i) << (8 * i);
		*p++ = (__force u64)cpu_to_le64(word);
		if (!(off & (SZ_1M - 1)))
			cond_resched();
	}
}

/* One record per allocation; caller holds cma_mem_lock so they never interleave. */
static void cma_mem_dump(const struct cma_mem_buf *buf)
{
	lockdep_assert_held(&cma_mem_lock);
	dump_mem_line("CMA name:%s", buf->name);
	dump_mem_line("CMA id:%u", buf->id);
	dump_mem_line("Is usebuf:%u", buf->wc ? 1 : 0);
	dump_mem_line("PHY Base:0x%016llx", (unsigned long long)buf->dma);
	dump_mem_line("KER Base:0x%p", buf->vaddr);	/* hashed */
	dump_mem_line("USR Base:0x%016llx", (unsigned long long)buf->user_addr);
	dump_mem_line("Size:%llu", (unsigned long long)buf->len);
}

static void cma_mem_to_uapi(const struct cma_mem_buf *buf,
			    struct cma_mem_block *ub)
{
	memset(ub, 0, sizeof(*ub));
	strscpy(ub->name, buf->name, sizeof(ub->name));
	ub->is_use_buffer = buf->wc ? CMA_MEM_WC : CMA_MEM_COHERENT;
	ub->id = buf->id;
	ub->offset = buf->offset;
	ub->len = buf->len;
	ub->phy_base = buf->dma;
	ub->mem_base = buf->user_addr;
}

/* Name: not empty, NUL-terminated within the array. */
static int cma_mem_check_name(const struct cma_mem_block *ub)
{
	size_t n = strnlen(ub->name, sizeof(ub->name));

	if (n == 0 || n == sizeof(ub->name))
		return -EINVAL;
	return 0;
}

/* ---- ioctls ---------------------------------------------------------- */

static long cma_mem_ioc_allocate(struct file *file,
				 struct cma_mem_block __user *uarg)
{
	struct device *dev = cma_mem_dev;
	struct cma_mem_file *cf = file->private_data;
	/*
	 * When CMA is full, dma-direct falls back to the page allocator; that
	 * buffer is refused below, so let the attempt fail quietly and never
	 * wake the OOM killer (exhausting CMA is a normal test).
	 */
	const gfp_t gfp = GFP_KERNEL | __GFP_NOWARN | __GFP_NORETRY;
	struct cma_mem_block ub;
	struct cma_mem_buf *buf;
	unsigned long addr;
	bool exists;
	long ret;

	if (copy_from_user(&ub, uarg, sizeof(ub)))
		return -EFAULT;
	if (cma_mem_check_name(&ub))
		return -EINVAL;
	if (ub.is_use_buffer != CMA_MEM_WC && ub.is_use_buffer != CMA_MEM_COHERENT)
		return -EINVAL;
	if (ub.len == 0 || ub.len > cma_mem_total)
		return -EINVAL;

	/* Cheap early check; repeated below where it counts. */
	mutex_lock(&cma_mem_lock);
	exists = cma_mem_find_name(cf, ub.name);
	mutex_unlock(&cma_mem_lock);
	if (exists)
		return -EEXIST;

	buf = kzalloc(sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	kref_init(&buf->ref);		/* the file list's reference */
	INIT_LIST_HEAD(&buf->file_node);
	INIT_LIST_HEAD(&buf->global_node);
	atomic_set(&buf->maps, 0);
	strscpy(buf->name, ub.name, sizeof(buf->name));
	buf->wc = ub.is_use_buffer == CMA_MEM_WC;
	buf->len = PAGE_ALIGN(ub.len);
	/*
	 * dma-direct takes single pages from the page allocator, never from
	 * CMA (dma_alloc_contiguous() skips CMA for size <= PAGE_SIZE unless
	 * the device has its own area, which a module cannot give it). Ask
	 * for two pages so a one-page block still comes from CMA; only the
	 * first page is ever mapped.
	 */
	buf->alloc_size = max_t(size_t, buf->len, 2 * PAGE_SIZE);

	if (buf->wc)
		buf->vaddr = dma_alloc_wc(dev, buf->alloc_size, &buf->dma, gfp);
	else
		buf->vaddr = dma_alloc_coherent(dev, buf->alloc_size, &buf->dma, gfp);
	if (!buf->vaddr) {
		kfree(buf);
		return -ENOMEM;
	}
	/*
	 * The misc device has no IOMMU and no DMA offset: the DMA address is
	 * the physical address. A buffer from outside CMA means CMA is full
	 * and dma-direct fell back to the page allocator: refuse it.
	 */
	if (!cma_mem_range_is_cma(buf->dma, buf->alloc_size)) {
		pr_debug("allocation of %zu bytes fell outside CMA\n",
			 buf->alloc_size);
		cma_mem_buf_free_memory(buf);	/* owner is still NULL */
		return -ENOMEM;
	}
	buf->owner = get_task_pid(current, PIDTYPE_TGID);

	mutex_lock(&cma_mem_lock);
	if (cma_mem_find_name(cf, buf->name)) {
		ret = -EEXIST;
		goto err_unlock;
	}
	ret = cma_mem_pick_offset(cf, buf->len, &buf->offset);
	if (ret)
		goto err_unlock;
	if (++cma_mem_last_id == 0)	/* ids are >= 1 */
		cma_mem_last_id = 1;
	buf->id = cma_mem_last_id;
	list_add_tail(&buf->file_node, &cf->blocks);
	list_add_tail(&buf->global_node, &cma_mem_all);
	cma_mem_used += buf->len;
	cma_mem_nblocks++;
	kref_get(&buf->ref);		/* ours, until this ioctl returns */
	mutex_unlock(&cma_mem_lock);

	/*
	 * Nobody else can reach the block before it is mapped except another
	 * thread of this process guessing the cookie; fill it now, unlocked.
	 */
	if (test_pattern)
		cma_mem_fill_pattern(buf);

	/* Lands in cma_mem_mmap(), which takes cma_mem_lock under mmap_lock. */
	addr = vm_mmap(file, 0, buf->len, PROT_READ | PROT_WRITE, MAP_SHARED,
		       buf->offset);
	if (IS_ERR_VALUE(addr)) {
		ret = (long)addr;
		goto err_unlist;
	}

	mutex_lock(&cma_mem_lock);
	if (list_empty(&buf->file_node)) {
		/* Freed by name from another thread meanwhile. */
		mutex_unlock(&cma_mem_lock);
		cma_mem_unmap_user(buf, addr);
		cma_mem_buf_put(buf);
		return -ENOENT;
	}
	buf->user_addr = addr;
	cma_mem_to_uapi(buf, &ub);
	mutex_unlock(&cma_mem_lock);

	if (copy_to_user(uarg, &ub, sizeof(ub))) {
		/* User space will never learn of the block: undo all of it. */
		ret = -EFAULT;
		cma_mem_unmap_user(buf, addr);
		goto err_unlist;
	}

	mutex_lock(&cma_mem_lock);
	if (!list_empty(&buf->file_node))
		cma_mem_dump(buf);
	mutex_unlock(&cma_mem_lock);
	cma_mem_buf_put(buf);
	return 0;

err_unlist:
	if (cma_mem_unlist(buf))
		cma_mem_buf_put(buf);
	cma_mem_buf_put(buf);
	return ret;

err_unlock:
	mutex_unlock(&cma_mem_lock);
	cma_mem_buf_free_memory(buf);
	return ret;
}

/*
 * Copy a by-name request in and find the caller's block: -EFAULT, -EINVAL
 * (bad name), -ENOENT (no such block in this file), -EPERM (not the owner).
 * On success returns 0 with cma_mem_lock held.
 */
static int cma_mem_lookup(struct file *file, struct cma_mem_block __user *uarg,
			  struct cma_mem_block *ub, struct cma_mem_buf **out)
{
	struct cma_mem_buf *buf;

	if (copy_from_user(ub, uarg, sizeof(*ub)))
		return -EFAULT;
	if (cma_mem_check_name(ub))
		return -EINVAL;

	mutex_lock(&cma_mem_lock);
	buf = cma_mem_find_name(file->private_data, ub->name);
	if (!buf) {
		mutex_unlock(&cma_mem_lock);
		return -ENOENT;
	}
	if (!cma_mem_is_owner(buf)) {
		mutex_unlock(&cma_mem_lock);
		return -EPERM;
	}
	*out = buf;
	return 0;
}

static long cma_mem_ioc_unmap(struct file *file,
			      struct cma_mem_block __user *uarg)
{
	struct cma_mem_block ub;
	struct cma_mem_buf *buf;
	unsigned long addr;
	int ret;

	ret = cma_mem_lookup(file, uarg, &ub, &buf);
	if (ret)
		return ret;
	list_del_init(&buf->file_node);	/* we now hold the list's reference */
	addr = buf->user_addr;
	buf->user_addr = 0;
	mutex_unlock(&cma_mem_lock);

	if (addr)
		cma_mem_unmap_user(buf, addr);
	/* Other mappings of the block keep it alive until they go. */
	cma_mem_buf_put(buf);
	return 0;
}

/* CMEM_GET_PHYS, CMEM_GET_SIZE, CMEM_CACHE_FLUSH: look a block up by name. */
static long cma_mem_ioc_query(struct file *file, unsigned int cmd,
			      struct cma_mem_block __user *uarg)
{
	struct cma_mem_block ub;
	struct cma_mem_buf *buf;
	int ret;

	ret = cma_mem_lookup(file, uarg, &ub, &buf);
	if (ret)
		return ret;
	cma_mem_to_uapi(buf, &ub);
	mutex_unlock(&cma_mem_lock);

	if (cmd == CMEM_CACHE_FLUSH) {
		/*
		 * The buffer is mapped write-combine or coherent on both
		 * sides: there is no cache to clean, only the CPU's write
		 * buffers to drain before a device looks at it.
		 */
		wmb();
		return 0;
	}
	if (copy_to_user(uarg, &ub, sizeof(ub)))
		return -EFAULT;
	return 0;
}

static long cma_mem_ioc_total(struct cma_mem_info __user *uarg)
{
	struct cma_mem_info info = { };

	mutex_lock(&cma_mem_lock);
	info.cma_total = cma_mem_total;
	info.used = cma_mem_used;
	info.available = cma_mem_total > cma_mem_used ?
			 cma_mem_total - cma_mem_used : 0;
	info.blocks = cma_mem_nblocks;
	mutex_unlock(&cma_mem_lock);

	if (copy_to_user(uarg, &info, sizeof(info)))
		return -EFAULT;
	return 0;
}

static long cma_mem_ioctl(struct file *file, unsigned int cmd,
			  unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	/* Whole-command match: a wrong direction or size is -ENOTTY too. */
	switch (cmd) {
	case CMEM_ALLOCATE:
		return cma_mem_ioc_allocate(file, uarg);
	case CMEM_UNMAP:
		return cma_mem_ioc_unmap(file, uarg);
	case CMEM_GET_PHYS:
	case CMEM_GET_SIZE:
	case CMEM_CACHE_FLUSH:
		return cma_mem_ioc_query(file, cmd, uarg);
	case CMEM_GET_TOTAL_SIZE:
		return cma_mem_ioc_total(uarg);
	case CMEM_MAP:		/* reserved by the seed, never implemented */
	case CMEM_CONNECT:
	default:
		return -ENOTTY;
	}
}

/* ---- mmap ------------------------------------------------------------ */

static void cma_mem_vm_open(struct vm_area_struct *vma)
{
	struct cma_mem_buf *buf = vma->vm_private_data;

	/* fork() or a VMA split: one more mapping of the block. */
	kref_get(&buf->ref);
	atomic_inc(&buf->maps);
}

static void cma_mem_vm_close(struct vm_area_struct *vma)
{
	struct cma_mem_buf *buf = vma->vm_private_data;

	atomic_dec(&buf->maps);
	cma_mem_buf_put(buf);
}

static const struct vm_operations_struct cma_mem_vm_ops = {
	.open = cma_mem_vm_open,
	.close = cma_mem_vm_close,
};

/* Runs under mmap_lock (write), from mmap(2) or from CMEM_ALLOCATE. */
static int cma_mem_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct device *dev = cma_mem_dev;
	struct cma_mem_file *cf = file->private_data;
	u64 off = (u64)vma->vm_pgoff << PAGE_SHIFT;
	u64 size = vma->vm_end - vma->vm_start;
	struct cma_mem_buf *buf;
	unsigned long pgoff;
	int ret;

	/* A private mapping would copy on write instead of sharing the buffer. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;

	mutex_lock(&cma_mem_lock);
	buf = cma_mem_find_offset(cf, off);
	if (!buf) {
		mutex_unlock(&cma_mem_lock);
		return -EINVAL;
	}
	if (!cma_mem_is_owner(buf)) {
		mutex_unlock(&cma_mem_lock);
		return -EPERM;
	}
	kref_get(&buf->ref);	/* becomes the VMA's reference on success */
	mutex_unlock(&cma_mem_lock);

	off -= buf->offset;
	if (size > buf->len - off) {
		ret = -EINVAL;
		goto err_put;
	}

	/* 6.1 has no vm_flags_set() (6.3+): vm_flags is still written directly. */
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
	/*
	 * dma_mmap_*() take vm_pgoff as the page offset inside the buffer;
	 * put the cookie back afterwards so /proc/PID/maps shows it.
	 * dma_mmap_*() also pick vm_page_prot to match the kernel mapping.
	 */
	pgoff = vma->vm_pgoff;
	vma->vm_pgoff = off >> PAGE_SHIFT;
	if (buf->wc)
		ret = dma_mmap_wc(dev, vma, buf->vaddr, buf->dma, buf->len);
	else
		ret = dma_mmap_coherent(dev, vma, buf->vaddr, buf->dma, buf->len);
	vma->vm_pgoff = pgoff;
	if (ret)
		goto err_put;

	vma->vm_private_data = buf;
	vma->vm_ops = &cma_mem_vm_ops;
	atomic_inc(&buf->maps);
	return 0;

err_put:
	cma_mem_buf_put(buf);
	return ret;
}

/* ---- open / release -------------------------------------------------- */

static int cma_mem_open(struct inode *inode, struct file *file)
{
	struct cma_mem_file *cf;

	/* Pairs with smp_store_release() in cma_mem_init(). */
	if (!smp_load_acquire(&cma_mem_dev_ready))
		return -ENODEV;

	cf = kzalloc(sizeof(*cf), GFP_KERNEL);
	if (!cf)
		return -ENOMEM;
	INIT_LIST_HEAD(&cf->blocks);
	file->private_data = cf;
	return 0;
}

/*
 * Last reference to the file: no VMA maps it any more (a VMA holds the
 * file), so dropping the list references frees every block of this file.
 */
static int cma_mem_release(struct inode *inode, struct file *file)
{
	struct cma_mem_file *cf = file->private_data;
	struct cma_mem_buf *buf, *tmp;
	LIST_HEAD(dead);

	mutex_lock(&cma_mem_lock);
	list_splice_init(&cf->blocks, &dead);
	mutex_unlock(&cma_mem_lock);

	list_for_each_entry_safe(buf, tmp, &dead, file_node) {
		list_del_init(&buf->file_node);
		cma_mem_buf_put(buf);
	}
	kfree(cf);
	return 0;
}

static const struct file_operations cma_mem_fops = {
	.owner = THIS_MODULE,
	.open = cma_mem_open,
	.release = cma_mem_release,
	.unlocked_ioctl = cma_mem_ioctl,
	.compat_ioctl = compat_ptr_ioctl,	/* same layout for 32-bit callers */
	.mmap = cma_mem_mmap,
	.llseek = noop_llseek,
};

static struct miscdevice cma_mem_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "cma_mem",
	.fops = &cma_mem_fops,
	.mode = 0600,
};

/* ---- debugfs: cma_mem/blocks ----------------------------------------- */

static int cma_mem_blocks_show(struct seq_file *s, void *unused)
{
	struct cma_mem_buf *buf;

	mutex_lock(&cma_mem_lock);
	list_for_each_entry(buf, &cma_mem_all, global_node)
		seq_printf(s, "pid=%d name=%s id=%u phys=0x%llx len=%llu flags=%s maps=%d\n",
			   pid_nr(buf->owner), buf->name, buf->id,
			   (unsigned long long)buf->dma,
			   (unsigned long long)buf->len,
			   buf->wc ? "wc" : "coherent",
			   atomic_read(&buf->maps));
	mutex_unlock(&cma_mem_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(cma_mem_blocks);

/* ---- module ---------------------------------------------------------- */

static void __init cma_mem_check_abi(void)
{
	/* The uapi layout is the same for 32- and 64-bit callers. */
	BUILD_BUG_ON(sizeof(struct cma_mem_block) != 56);
	BUILD_BUG_ON(offsetof(struct cma_mem_block, name) != 0);
	BUILD_BUG_ON(offsetof(struct cma_mem_block, is_use_buffer) != 16);
	BUILD_BUG_ON(offsetof(struct cma_mem_block, id) != 20);
	BUILD_BUG_ON(offsetof(struct cma_mem_block, offset) != 24);
	BUILD_BUG_ON(offsetof(struct cma_mem_block, len) != 32);
	BUILD_BUG_ON(offsetof(struct cma_mem_block, phy_base) != 40);
	BUILD_BUG_ON(offsetof(struct cma_mem_block, mem_base) != 48);
	BUILD_BUG_ON(sizeof(struct cma_mem_info) != 32);
	BUILD_BUG_ON(offsetof(struct cma_mem_info, cma_total) != 0);
	BUILD_BUG_ON(offsetof(struct cma_mem_info, used) != 8);
	BUILD_BUG_ON(offsetof(struct cma_mem_info, available) != 16);
	BUILD_BUG_ON(offsetof(struct cma_mem_info, blocks) != 24);
	BUILD_BUG_ON(offsetof(struct cma_mem_info, reserved) != 28);
	/* cma_mem_pfn_migratetype() assumes the 6.1 bitmap layout. */
	BUILD_BUG_ON(NR_PAGEBLOCK_BITS != 4);
	BUILD_BUG_ON(MIGRATETYPE_MASK != 7);
}

static int __init cma_mem_init(void)
{
	int ret;

	cma_mem_check_abi();

	cma_mem_find_cma();
	if (cma_mem_total)
		pr_info("CMA: %llu MiB in [%pa-%pa)\n",
			cma_mem_total >> 20, &cma_mem_lo, &cma_mem_hi);
	else
		pr_warn("no CMA area found: every allocation will fail\n");

	cma_mem_debugfs = debugfs_create_dir("cma_mem", NULL);
	debugfs_create_file("blocks", 0400, cma_mem_debugfs, NULL,
			    &cma_mem_blocks_fops);

	ret = misc_register(&cma_mem_misc);
	if (ret) {
		pr_err("misc_register failed: %d\n", ret);
		goto err_debugfs;
	}
	/*
	 * Every allocation is made for the misc device: it needs a DMA mask.
	 * Hold a reference so the device outlives misc_deregister() at unload
	 * for as long as memory allocated for it may still be freed.
	 */
	cma_mem_dev = get_device(cma_mem_misc.this_device);
	ret = dma_coerce_mask_and_coherent(cma_mem_dev, DMA_BIT_MASK(64));
	if (ret) {
		pr_err("cannot set the DMA mask: %d\n", ret);
		goto err_misc;
	}
	/* Until now open() refused: the device had no DMA mask yet. */
	smp_store_release(&cma_mem_dev_ready, true);
	return 0;

err_misc:
	misc_deregister(&cma_mem_misc);
	put_device(cma_mem_dev);
err_debugfs:
	debugfs_remove_recursive(cma_mem_debugfs);
	return ret;
}

static void __exit cma_mem_exit(void)
{
	struct cma_mem_buf *buf, *tmp;

	misc_deregister(&cma_mem_misc);
	debugfs_remove_recursive(cma_mem_debugfs);

	/*
	 * Open files and mappings pin the module (fops.owner, and a VMA holds
	 * its file), so nothing can be left here. Free it anyway if it is.
	 */
	list_for_each_entry_safe(buf, tmp, &cma_mem_all, global_node) {
		pr_warn("block %s (id %u) still allocated at unload\n",
			buf->name, buf->id);
		list_del(&buf->global_node);
		cma_mem_buf_free_memory(buf);
	}
	put_device(cma_mem_dev);
}

module_init(cma_mem_init);
module_exit(cma_mem_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Physically contiguous CMA buffers mapped into user space");
