/*
 * mgpu: a userspace driver for the mediated-gpu vGPU, over vfio-pci inside the
 * guest (behind a vIOMMU). See README.md for the programming model; the
 * register numbers come from mgpu-abi.h, generated from the project's one
 * definition of the guest-visible interface when the tool is built.
 */
#ifndef MGPU_H
#define MGPU_H

#include <stddef.h>
#include <stdint.h>

#include "mgpu-abi.h"

/* What the PV block says this guest owns. */
struct mgpu_partition {
  uint32_t version;
  uint64_t lm_base;     /* parent local-memory address of BAR0 offset 0 */
  uint32_t lm_size;     /* bytes of local memory (= BAR0 size) */
  uint32_t gm_base;     /* first graphics address (GMA) of the partition */
  uint32_t gm_size;     /* bytes of graphics address space */
  uint32_t gtt_offset;  /* BAR2 offset of the GTT (8 bytes per entry) */
  uint32_t gtt_entries; /* = gm_size / 4096 */
  uint32_t max_width, max_height;
};

/* A surface: 32 bpp, `pitch` bytes per line, at a graphics address. */
struct mgpu_surface {
  uint32_t gma;
  uint32_t width, height, pitch;
  uint8_t *cpu; /* where the CPU sees it (BAR0 mapping or the DMA buffer) */
};

/* Why the engine stopped, as the device reported it. */
struct mgpu_error {
  uint32_t iir;     /* interrupt identity bits latched with the failure */
  uint32_t code;    /* ENGINE_ERROR */
  uint32_t address; /* ENGINE_ERROR_ADDR */
};

#define MGPU_SLOTS 32
#define MGPU_SLOT_BYTES (32u << 10)
#define MGPU_RING_BYTES (64u << 10)

struct mgpu {
  char bdf[32];
  int container, group, device;
  struct mgpu_partition pv;
  volatile uint8_t *bar2;
  uint8_t *lm; /* BAR0: our slice of local memory, mapped */
  size_t bar0_size, bar2_size;
  int irq_fd; /* MSI vector 0, through a vfio eventfd */

  /* Guest system memory the device may reach: one IOMMU-mapped DMA buffer. */
  uint8_t *sys;
  size_t sys_size;
  uint64_t sys_iova;
  uint32_t sys_gma; /* GMA of sys[0]: the GTT maps it right after local memory */

  uint32_t ring_gma, tail;
  uint32_t *ring;
  volatile uint32_t *hwsp; /* status page: the engine writes breadcrumbs here */
  uint32_t hwsp_gma;
  uint32_t seqno;                  /* last seqno submitted */
  uint32_t slot_seqno[MGPU_SLOTS]; /* the seqno that frees each batch slot */
  unsigned next_slot;
  uint32_t big_gma; /* a larger batch area (the rest of the DMA buffer) */
  uint8_t *big;
  size_t big_size;

  /* Local memory: a bump allocator, its pages entered in the GTT as it grows. */
  uint32_t lm_next, lm_mapped;

  /* Counters: MMIO traps we caused, interrupts we consumed. */
  uint64_t reads, writes, irqs, wakeups;
};

/* Bring-up: vfio, PV block, BARs, MSI, DMA buffer, GTT for it, ring. 0 or -errno. */
int mgpu_open(struct mgpu *g, const char *bdf, size_t sys_size);
void mgpu_close(struct mgpu *g);

uint32_t mgpu_read(struct mgpu *g, uint32_t reg);
void mgpu_write(struct mgpu *g, uint32_t reg, uint32_t value);
/* One GTT entry (index into the partition): local memory or a system page. */
void mgpu_gtt_set(struct mgpu *g, uint32_t index, uint64_t address, int system);
uint64_t mgpu_gtt_get(struct mgpu *g, uint32_t index);

/* Local-memory surfaces. mgpu_lm_reset frees them all (the GTT keeps its pages). */
int mgpu_alloc_surface(struct mgpu *g, uint32_t width, uint32_t height, struct mgpu_surface *s);
void mgpu_lm_reset(struct mgpu *g);

/* Command encoders (the formats of README.md); each returns dwords written. */
unsigned mgpu_xy_color_blt(uint32_t *out, const struct mgpu_surface *dst, uint32_t x, uint32_t y,
                           uint32_t w, uint32_t h, uint32_t color);
unsigned mgpu_xy_src_copy_blt(uint32_t *out, const struct mgpu_surface *dst, uint32_t x, uint32_t y,
                              uint32_t w, uint32_t h, const struct mgpu_surface *src, uint32_t sx,
                              uint32_t sy);
unsigned mgpu_bb_start(uint32_t *out, uint32_t gma, int second_level);

/*
 * Submission. A batch slot is MGPU_SLOT_BYTES in the DMA buffer; mgpu_slot()
 * waits until it is free and returns where to write the commands; mgpu_submit()
 * appends the breadcrumb (store seqno, user interrupt, batch end) and starts it
 * from the ring with one tail write. Returns the seqno, or 0 on error.
 */
uint32_t *mgpu_slot(struct mgpu *g, unsigned *slot, int timeout_ms, struct mgpu_error *err);
uint32_t mgpu_submit(struct mgpu *g, unsigned slot, unsigned ndw);
/*
 * The same in two steps, for queueing several requests behind one tail write:
 * mgpu_queue() puts the request in the ring (with a user interrupt only if
 * asked: the last of a group, the one a waiter sleeps on), mgpu_kick() moves
 * the tail. Any seqno of the group completes no later than the interrupting one.
 */
uint32_t mgpu_queue(struct mgpu *g, unsigned slot, unsigned ndw, int interrupt);
void mgpu_kick(struct mgpu *g);
/* Starts a batch anywhere in our graphics memory (no breadcrumb added). */
void mgpu_submit_raw(struct mgpu *g, uint32_t batch_gma, uint32_t seqno_for_slot, int slot);
/* Sleeps on the MSI eventfd until the breadcrumb reaches seqno. 0, -EIO (err filled) or -ETIMEDOUT. */
int mgpu_wait(struct mgpu *g, uint32_t seqno, int timeout_ms, struct mgpu_error *err);
/* Waits for the next interrupt whatever it is; returns the IIR bits (acknowledged) or 0 on timeout. */
uint32_t mgpu_wait_irq(struct mgpu *g, int timeout_ms);
/* After an error: reset the (virtual) engine, acknowledge, forget what was in flight. */
void mgpu_recover(struct mgpu *g);

/* Display: a 32 bpp mode scanning out a local-memory surface (through DISPI). */
int mgpu_mode_set(struct mgpu *g, const struct mgpu_surface *s);

/* CRC-32 (IEEE, as zlib), for comparing rendered surfaces with the host. */
uint32_t mgpu_crc32(uint32_t crc, const uint8_t *p, size_t n);
uint32_t mgpu_surface_crc(const struct mgpu_surface *s);

double mgpu_now(void);

#endif
