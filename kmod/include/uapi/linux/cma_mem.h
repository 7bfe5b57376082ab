/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * cma_mem: user-space ABI of /dev/cma_mem.
 *
 * This header is the only description of the ABI. The driver (kmod/), the
 * test program (userland/) and the Python harness (harness/abi.py parses
 * this file) all read it from here.
 *
 * Layout rules: fixed-width fields only, every field naturally aligned and
 * the struct padded to a multiple of 8, so a 32-bit (armhf) caller and a
 * 64-bit (arm64) caller see the same offsets and the same size. Physical
 * and user addresses are 64-bit everywhere (LPAE physical addresses exceed
 * 32 bits). No kernel virtual address is ever part of the ABI.
 */
#ifndef _UAPI_LINUX_CMA_MEM_H
#define _UAPI_LINUX_CMA_MEM_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <linux/types.h>
#include <sys/ioctl.h>
#endif
#include <linux/ioctl.h>

#define CMA_MEM_DEVICE "/dev/cma_mem"

/* Block names: at most CMA_MEM_NAME_LEN - 1 bytes, NUL-terminated, not empty. */
#define CMA_MEM_NAME_LEN 16

/* cma_mem_block.is_use_buffer: which DMA allocator backs the block. */
#define CMA_MEM_COHERENT 0 /* dma_alloc_coherent / dma_mmap_coherent */
#define CMA_MEM_WC 1       /* dma_alloc_wc / dma_mmap_wc (write-combine) */

/*
 * One block. The seed's field names are kept where the meaning is kept;
 * kernel_base (a kernel virtual address) is gone.
 */
struct cma_mem_block {
	char name[CMA_MEM_NAME_LEN]; /* in: block name, NUL-terminated */
	__u32 is_use_buffer;         /* in: CMA_MEM_WC or CMA_MEM_COHERENT */
	__u32 id;                    /* out: driver-assigned id, >= 1 */
	__u64 offset;                /* out: mmap() offset of this block on the device fd */
	__u64 len;                   /* in: bytes wanted; out: page-aligned length */
	__u64 phy_base;              /* out: physical (bus) address */
	__u64 mem_base;              /* out: user address of the mapping made by ALLOCATE */
};

/* Totals the driver can report (CMEM_GET_TOTAL_SIZE). */
struct cma_mem_info {
	__u64 cma_total;  /* bytes in the CMA area the driver allocates from */
	__u64 used;       /* bytes currently held by live blocks (all owners) */
	__u64 available;  /* cma_total - used: an upper bound of what can still be allocated */
	__u32 blocks;     /* live blocks (all owners) */
	__u32 reserved;   /* must be zero */
};

#define CMA_MEM_IOC_MAGIC 'm'

/* Numbers 1..8 are the seed's; the direction and size are now the real ones. */
#define CMEM_GET_PHYS       _IOWR(CMA_MEM_IOC_MAGIC, 1, struct cma_mem_block) /* by name: phy_base, len, id, offset */
#define CMEM_MAP            _IOWR(CMA_MEM_IOC_MAGIC, 2, struct cma_mem_block) /* reserved: -ENOTTY */
#define CMEM_GET_SIZE       _IOWR(CMA_MEM_IOC_MAGIC, 3, struct cma_mem_block) /* by name: len */
#define CMEM_UNMAP          _IOWR(CMA_MEM_IOC_MAGIC, 4, struct cma_mem_block) /* by name: unmap and free */
#define CMEM_ALLOCATE       _IOWR(CMA_MEM_IOC_MAGIC, 5, struct cma_mem_block) /* allocate and map */
#define CMEM_CONNECT        _IOWR(CMA_MEM_IOC_MAGIC, 6, struct cma_mem_block) /* reserved: -ENOTTY */
#define CMEM_GET_TOTAL_SIZE _IOR(CMA_MEM_IOC_MAGIC, 7, struct cma_mem_info)
#define CMEM_CACHE_FLUSH    _IOWR(CMA_MEM_IOC_MAGIC, 8, struct cma_mem_block) /* by name: write barrier */

/*
 * The test pattern the driver writes into every new block (module
 * parameter test_pattern=1, the default). For off < 256 it equals the
 * seed's (id * i) & 0xff, so the seed's ten-byte check still holds; the
 * higher terms make the byte depend on its page and MiB, so a mapping of
 * the wrong page or a shifted mapping is caught anywhere in the buffer.
 */
static inline __u8 cma_mem_pattern_byte(__u32 id, __u64 off)
{
	return (__u8)(id * off + (off >> 8) * 131 + (off >> 16) * 7 + (off >> 24) * 13);
}

#endif /* _UAPI_LINUX_CMA_MEM_H */
