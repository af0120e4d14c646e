/*
 * mgpu: the vGPU driver itself — vfio bring-up, the PV block, the GTT, the
 * ring with breadcrumbs, completion on the MSI eventfd, DISPI mode set.
 * Written as a guest driver writer would, from README.md alone.
 */
#define _GNU_SOURCE
#include "mgpu.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
/* Where our DMA buffer sits in the IOMMU's address space: above 4 GiB on purpose,
 * so the GTT entries' high dword is exercised. */
#define SYS_IOVA 0x100000000ull

static int fail(const char *what) {
  int e = errno ? errno : EIO;
  fprintf(stderr, "mgpu: %s: %s\n", what, strerror(e));
  return -e;
}

double mgpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* ---- register access: BAR2 is mmapped; every access traps to the device model */

uint32_t mgpu_read(struct mgpu *g, uint32_t reg) {
  g->reads++;
  return *(volatile uint32_t *)(g->bar2 + reg);
}

void mgpu_write(struct mgpu *g, uint32_t reg, uint32_t value) {
  g->writes++;
  *(volatile uint32_t *)(g->bar2 + reg) = value;
}

static void dispi_write(struct mgpu *g, unsigned index, uint16_t value) {
  g->writes++;
  *(volatile uint16_t *)(g->bar2 + MGPU_BAR2_DISPI + index * 2) = value;
}

static uint16_t dispi_read(struct mgpu *g, unsigned index) {
  g->reads++;
  return *(volatile uint16_t *)(g->bar2 + MGPU_BAR2_DISPI + index * 2);
}

void mgpu_gtt_set(struct mgpu *g, uint32_t index, uint64_t address, int system) {
  uint64_t entry = (address & ~(uint64_t)0xfff) | MGPU_GTT_VALID | (system ? MGPU_GTT_SYSTEM : 0);
  /* One 8-byte store: the entry changes atomically (no half-written entry is ever live). */
  g->writes++;
  *(volatile uint64_t *)(g->bar2 + g->pv.gtt_offset + (uint64_t)index * 8) = entry;
}

uint64_t mgpu_gtt_get(struct mgpu *g, uint32_t index) {
  g->reads++;
  return *(volatile uint64_t *)(g->bar2 + g->pv.gtt_offset + (uint64_t)index * 8);
}

/* ---- vfio bring-up ---------------------------------------------------------- */

static int region(struct mgpu *g, unsigned index, struct vfio_region_info *info) {
  memset(info, 0, sizeof *info);
  info->argsz = sizeof *info;
  info->index = index;
  return ioctl(g->device, VFIO_DEVICE_GET_REGION_INFO, info);
}

/* The vendor-specific capability that names the device a vGPU of this project: "MGPV", version. */
static int find_vendor_capability(struct mgpu *g, const struct vfio_region_info *cfg, int *version) {
  uint8_t space[256];
  if (pread(g->device, space, sizeof space, cfg->offset) != (ssize_t)sizeof space) return fail("config read");
  if (!(space[0x06] & 0x10)) return -ENODEV; /* no capability list */
  for (unsigned at = space[0x34] & ~3u, hops = 0; at >= 0x40 && hops < 48; at = space[at + 1] & ~3u, hops++) {
    if (space[at] == MGPU_VENDOR_CAP_ID && space[at + 2] >= 8 && !memcmp(&space[at + 3], "MGPV", 4)) {
      *version = space[at + 7];
      return 0;
    }
  }
  return -ENODEV;
}

static int read_pv(struct mgpu *g) {
  struct mgpu_partition *p = &g->pv;
  if (mgpu_read(g, MGPU_BAR2_PV_INFO + MGPU_PV_MAGIC) != MGPU_PV_MAGIC_VALUE) return -ENODEV;
  uint32_t pv[0x30 / 4];
  for (unsigned i = 0; i < sizeof pv / 4; i++) pv[i] = mgpu_read(g, MGPU_BAR2_PV_INFO + i * 4);
  p->version = pv[MGPU_PV_VERSION / 4];
  p->lm_base = pv[MGPU_PV_LM_BASE_LO / 4] | (uint64_t)pv[MGPU_PV_LM_BASE_HI / 4] << 32;
  p->lm_size = pv[MGPU_PV_LM_SIZE / 4];
  p->gm_base = pv[MGPU_PV_GM_BASE / 4];
  p->gm_size = pv[MGPU_PV_GM_SIZE / 4];
  p->gtt_offset = pv[MGPU_PV_GTT_OFFSET / 4];
  p->gtt_entries = pv[MGPU_PV_GTT_ENTRIES / 4];
  p->max_width = pv[MGPU_PV_MAX_WIDTH / 4];
  p->max_height = pv[MGPU_PV_MAX_HEIGHT / 4];
  if (p->gtt_entries * (uint64_t)PAGE != p->gm_size || p->lm_size > p->gm_size ||
      p->gtt_offset + p->gtt_entries * 8ull > g->bar2_size)
    return -EINVAL;
  return 0;
}

static int enable_msi(struct mgpu *g) {
  struct vfio_irq_info info = {.argsz = sizeof info, .index = VFIO_PCI_MSI_IRQ_INDEX};
  if (ioctl(g->device, VFIO_DEVICE_GET_IRQ_INFO, &info)) return fail("GET_IRQ_INFO MSI");
  if (info.count < 1) return -ENODEV;
  g->irq_fd = eventfd(0, EFD_CLOEXEC);
  if (g->irq_fd < 0) return fail("eventfd");
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *set = (struct vfio_irq_set *)buf;
  set->argsz = sizeof buf;
  set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set->index = VFIO_PCI_MSI_IRQ_INDEX;
  set->start = 0;
  set->count = 1;
  memcpy(set->data, &g->irq_fd, sizeof(int));
  if (ioctl(g->device, VFIO_DEVICE_SET_IRQS, set)) return fail("SET_IRQS MSI");
  return 0;
}

/* Our system memory: anonymous pages pinned and mapped in the vIOMMU at SYS_IOVA. */
static int map_dma_buffer(struct mgpu *g, size_t size) {
  g->sys = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (g->sys == MAP_FAILED) return g->sys = NULL, fail("mmap DMA buffer");
  memset(g->sys, 0, size);
  g->sys_size = size;
  g->sys_iova = SYS_IOVA;
  struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map,
                                         .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                         .vaddr = (uintptr_t)g->sys,
                                         .iova = g->sys_iova,
                                         .size = size};
  if (ioctl(g->container, VFIO_IOMMU_MAP_DMA, &map)) return fail("IOMMU_MAP_DMA");
  return 0;
}

static void start_ring(struct mgpu *g) {
  /* Layout of the DMA buffer: ring, status page, batch slots, then one large batch area. */
  g->ring = (uint32_t *)g->sys;
  g->ring_gma = g->sys_gma;
  g->hwsp = (volatile uint32_t *)(g->sys + MGPU_RING_BYTES);
  g->hwsp_gma = g->sys_gma + MGPU_RING_BYTES;
  size_t slots_at = 2 * MGPU_RING_BYTES;
  size_t big_at = slots_at + MGPU_SLOTS * (size_t)MGPU_SLOT_BYTES;
  g->big = g->sys + big_at;
  g->big_gma = g->sys_gma + big_at;
  g->big_size = g->sys_size - big_at;
  g->seqno = 0;
  g->hwsp[0] = 0;
  memset(g->slot_seqno, 0, sizeof g->slot_seqno);

  mgpu_write(g, MGPU_REG_RING_CTL, 0);
  mgpu_write(g, MGPU_REG_RING_START, g->ring_gma);
  mgpu_write(g, MGPU_REG_RING_CTL,
             ((MGPU_RING_BYTES / PAGE - 1) << MGPU_RING_CTL_LENGTH_SHIFT) | MGPU_RING_CTL_ENABLE);
  g->tail = 0;
  /* Completions and failures interrupt; idle does not (the breadcrumb tells us). */
  uint32_t wanted = MGPU_IRQ_USER | MGPU_IRQ_ENGINE_ERROR | MGPU_IRQ_GTT_FAULT;
  mgpu_write(g, MGPU_REG_IMR, ~wanted);
  mgpu_write(g, MGPU_REG_IIR, 0xffffffff);
  mgpu_write(g, MGPU_REG_IER, wanted);
}

int mgpu_open(struct mgpu *g, const char *bdf, size_t sys_size) {
  memset(g, 0, sizeof *g);
  g->container = g->group = g->device = g->irq_fd = -1;
  snprintf(g->bdf, sizeof g->bdf, "%s", bdf);
  char path[PATH_MAX], link[PATH_MAX];
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", bdf);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) return fail("no IOMMU group (is the vIOMMU on and the device bound to vfio-pci?)");
  link[n] = 0;
  snprintf(path, sizeof path, "/dev/vfio/%s", strrchr(link, '/') + 1);

  if ((g->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC)) < 0) return fail("open /dev/vfio/vfio");
  if ((g->group = open(path, O_RDWR | O_CLOEXEC)) < 0) return fail("open IOMMU group");
  struct vfio_group_status status = {.argsz = sizeof status};
  if (ioctl(g->group, VFIO_GROUP_GET_STATUS, &status)) return fail("GROUP_GET_STATUS");
  if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE)) return errno = EBUSY, fail("IOMMU group not viable");
  if (ioctl(g->group, VFIO_GROUP_SET_CONTAINER, &g->container)) return fail("GROUP_SET_CONTAINER");
  if (ioctl(g->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) return fail("SET_IOMMU");
  if ((g->device = ioctl(g->group, VFIO_GROUP_GET_DEVICE_FD, bdf)) < 0) return fail("GET_DEVICE_FD");

  struct vfio_region_info cfg, bar0, bar2;
  if (region(g, VFIO_PCI_CONFIG_REGION_INDEX, &cfg) || region(g, VFIO_PCI_BAR0_REGION_INDEX, &bar0) ||
      region(g, VFIO_PCI_BAR2_REGION_INDEX, &bar2))
    return fail("GET_REGION_INFO");
  int version, r = find_vendor_capability(g, &cfg, &version);
  if (r) return fprintf(stderr, "mgpu: %s is not a vGPU (no MGPV capability)\n", bdf), r;
  uint16_t command;
  if (pread(g->device, &command, 2, cfg.offset + 4) != 2) return fail("read COMMAND");
  command |= 0x6; /* memory space, bus master */
  if (pwrite(g->device, &command, 2, cfg.offset + 4) != 2) return fail("write COMMAND");

  if (!(bar0.flags & VFIO_REGION_INFO_FLAG_MMAP) || !(bar2.flags & VFIO_REGION_INFO_FLAG_MMAP))
    return errno = ENOTSUP, fail("BAR0/BAR2 not mappable");
  g->bar0_size = bar0.size;
  g->bar2_size = bar2.size;
  g->lm = mmap(NULL, bar0.size, PROT_READ | PROT_WRITE, MAP_SHARED, g->device, bar0.offset);
  if (g->lm == MAP_FAILED) return g->lm = NULL, fail("mmap BAR0");
  g->bar2 = mmap(NULL, bar2.size, PROT_READ | PROT_WRITE, MAP_SHARED, g->device, bar2.offset);
  if (g->bar2 == MAP_FAILED) return g->bar2 = NULL, fail("mmap BAR2");

  if ((r = read_pv(g))) return fprintf(stderr, "mgpu: no valid PV block\n"), r;
  if (g->pv.lm_size != bar0.size) return fprintf(stderr, "mgpu: BAR0 size differs from the PV block\n"), -EINVAL;
  if ((r = enable_msi(g))) return r;

  /* System pages go in the GTT right after local memory. */
  uint32_t first = g->pv.lm_size / PAGE, pages = sys_size / PAGE;
  if (first + pages > g->pv.gtt_entries) return errno = ENOSPC, fail("DMA buffer larger than the GTT");
  if ((r = map_dma_buffer(g, sys_size))) return r;
  for (uint32_t i = 0; i < pages; i++) mgpu_gtt_set(g, first + i, g->sys_iova + (uint64_t)i * PAGE, 1);
  uint64_t check = mgpu_gtt_get(g, first + pages - 1);
  if (check != ((g->sys_iova + (uint64_t)(pages - 1) * PAGE) | MGPU_GTT_VALID | MGPU_GTT_SYSTEM))
    return fprintf(stderr, "mgpu: GTT entry did not read back (0x%llx)\n", (unsigned long long)check), -EIO;
  g->sys_gma = g->pv.gm_base + first * PAGE;
  start_ring(g);
  return 0;
}

void mgpu_close(struct mgpu *g) {
  if (g->device >= 0) {
    mgpu_write(g, MGPU_REG_IER, 0);
    mgpu_write(g, MGPU_REG_RING_CTL, 0);
  }
  if (g->sys) {
    struct vfio_iommu_type1_dma_unmap unmap = {.argsz = sizeof unmap, .iova = g->sys_iova, .size = g->sys_size};
    ioctl(g->container, VFIO_IOMMU_UNMAP_DMA, &unmap);
    munmap(g->sys, g->sys_size);
  }
  if (g->lm) munmap(g->lm, g->bar0_size);
  if (g->bar2) munmap((void *)g->bar2, g->bar2_size);
  if (g->irq_fd >= 0) close(g->irq_fd);
  if (g->device >= 0) close(g->device);
  if (g->group >= 0) close(g->group);
  if (g->container >= 0) close(g->container);
}

/* ---- local memory ------------------------------------------------------------ */

void mgpu_lm_reset(struct mgpu *g) { g->lm_next = 0; }

int mgpu_alloc_surface(struct mgpu *g, uint32_t width, uint32_t height, struct mgpu_surface *s) {
  uint32_t pitch = width * 4;
  uint64_t bytes = ((uint64_t)pitch * height + PAGE - 1) & ~(uint64_t)(PAGE - 1);
  if (g->lm_next + bytes > g->pv.lm_size) return -ENOSPC;
  s->gma = g->pv.gm_base + g->lm_next;
  s->width = width;
  s->height = height;
  s->pitch = pitch;
  s->cpu = g->lm + g->lm_next;
  g->lm_next += bytes;
  /* GMA base+x ↔ local memory lm_base+x: enter pages as the allocator first reaches them. */
  for (; g->lm_mapped < g->lm_next; g->lm_mapped += PAGE)
    mgpu_gtt_set(g, g->lm_mapped / PAGE, g->pv.lm_base + g->lm_mapped, 0);
  return 0;
}

/* ---- commands --------------------------------------------------------------- */

#define MI(op, extra) (((uint32_t)(op) << 23) | (extra))
#define XY(x, y) ((((uint32_t)(y) & 0xffff) << 16) | ((uint32_t)(x) & 0xffff))

unsigned mgpu_xy_color_blt(uint32_t *o, const struct mgpu_surface *d, uint32_t x, uint32_t y, uint32_t w,
                           uint32_t h, uint32_t color) {
  o[0] = (MGPU_CLIENT_2D << 29) | (MGPU_BLT_XY_COLOR_BLT << 22) | MGPU_BLT_WRITE_RGBA | 5;
  o[1] = MGPU_BLT_DEPTH_32 | (MGPU_ROP_PATCOPY << 16) | (d->pitch & 0xffff);
  o[2] = XY(x, y);
  o[3] = XY(x + w, y + h);
  o[4] = d->gma;
  o[5] = 0;
  o[6] = color;
  return 7;
}

unsigned mgpu_xy_src_copy_blt(uint32_t *o, const struct mgpu_surface *d, uint32_t x, uint32_t y, uint32_t w,
                              uint32_t h, const struct mgpu_surface *s, uint32_t sx, uint32_t sy) {
  o[0] = (MGPU_CLIENT_2D << 29) | (MGPU_BLT_XY_SRC_COPY_BLT << 22) | MGPU_BLT_WRITE_RGBA | 8;
  o[1] = MGPU_BLT_DEPTH_32 | (MGPU_ROP_SRCCOPY << 16) | (d->pitch & 0xffff);
  o[2] = XY(x, y);
  o[3] = XY(x + w, y + h);
  o[4] = d->gma;
  o[5] = 0;
  o[6] = XY(sx, sy);
  o[7] = s->pitch & 0xffff;
  o[8] = s->gma;
  o[9] = 0;
  return 10;
}

unsigned mgpu_bb_start(uint32_t *o, uint32_t gma, int second_level) {
  o[0] = MI(MGPU_MI_BATCH_BUFFER_START, (second_level ? MGPU_BB_SECOND_LEVEL : 0) | 1);
  o[1] = gma;
  o[2] = 0;
  return 3;
}

/* ---- submission and completion --------------------------------------------- */

static int passed(struct mgpu *g, uint32_t seqno) { return (int32_t)(g->hwsp[0] - seqno) >= 0; }

uint32_t *mgpu_slot(struct mgpu *g, unsigned *slot, int timeout_ms, struct mgpu_error *err) {
  unsigned s = g->next_slot;
  if (g->slot_seqno[s] && mgpu_wait(g, g->slot_seqno[s], timeout_ms, err)) return NULL;
  g->next_slot = (s + 1) % MGPU_SLOTS;
  *slot = s;
  return (uint32_t *)(g->sys + 2 * MGPU_RING_BYTES + (size_t)s * MGPU_SLOT_BYTES);
}

/* Four dwords in the ring: a batch start and a no-op (the device sees them at the next kick). */
static void ring_emit_batch(struct mgpu *g, uint32_t batch_gma, int second_level) {
  uint32_t *r = g->ring + g->tail / 4;
  mgpu_bb_start(r, batch_gma, second_level);
  r[3] = MI(MGPU_MI_NOOP, 0);
  g->tail = (g->tail + 16) % MGPU_RING_BYTES;
}

void mgpu_kick(struct mgpu *g) {
  __sync_synchronize(); /* the commands are in memory before the device hears of them */
  mgpu_write(g, MGPU_REG_RING_TAIL, g->tail);
}

uint32_t mgpu_queue(struct mgpu *g, unsigned slot, unsigned ndw, int interrupt) {
  uint32_t *b = (uint32_t *)(g->sys + 2 * MGPU_RING_BYTES + (size_t)slot * MGPU_SLOT_BYTES);
  if ((ndw + 6) * 4 > MGPU_SLOT_BYTES) return 0;
  uint32_t seqno = ++g->seqno;
  /* Breadcrumb: store the seqno in the status page, then (if someone will wait on it) interrupt. */
  b[ndw++] = MI(MGPU_MI_STORE_DATA_IMM, (1u << 22) | 2);
  b[ndw++] = g->hwsp_gma;
  b[ndw++] = 0;
  b[ndw++] = seqno;
  b[ndw++] = interrupt ? MI(MGPU_MI_USER_INTERRUPT, 0) : MI(MGPU_MI_NOOP, 0);
  b[ndw++] = MI(MGPU_MI_BATCH_BUFFER_END, 0);
  g->slot_seqno[slot] = seqno;
  ring_emit_batch(g, g->sys_gma + 2 * MGPU_RING_BYTES + slot * MGPU_SLOT_BYTES, 0);
  return seqno;
}

uint32_t mgpu_submit(struct mgpu *g, unsigned slot, unsigned ndw) {
  uint32_t seqno = mgpu_queue(g, slot, ndw, 1);
  if (seqno) mgpu_kick(g);
  return seqno;
}

void mgpu_submit_raw(struct mgpu *g, uint32_t batch_gma, uint32_t seqno_for_slot, int slot) {
  if (slot >= 0) g->slot_seqno[slot] = seqno_for_slot;
  ring_emit_batch(g, batch_gma, 0);
  mgpu_kick(g);
}

static uint64_t consume_irq(struct mgpu *g) {
  uint64_t count = 0;
  if (read(g->irq_fd, &count, sizeof count) == sizeof count) g->irqs += count;
  g->wakeups++;
  return count;
}

static int failed(struct mgpu *g, struct mgpu_error *err) {
  uint32_t iir = mgpu_read(g, MGPU_REG_IIR);
  if (iir) mgpu_write(g, MGPU_REG_IIR, iir); /* write 1 to clear */
  if (!(iir & (MGPU_IRQ_ENGINE_ERROR | MGPU_IRQ_GTT_FAULT))) return 0;
  if (err) {
    err->iir = iir;
    err->code = mgpu_read(g, MGPU_REG_ENGINE_ERROR);
    err->address = mgpu_read(g, MGPU_REG_ENGINE_ERROR_ADDR);
  }
  return 1;
}

int mgpu_wait(struct mgpu *g, uint32_t seqno, int timeout_ms, struct mgpu_error *err) {
  double deadline = mgpu_now() + timeout_ms / 1000.0;
  for (;;) {
    if (passed(g, seqno)) return 0;
    int left = (int)((deadline - mgpu_now()) * 1000);
    struct pollfd p = {.fd = g->irq_fd, .events = POLLIN};
    int ready = left > 0 ? poll(&p, 1, left) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 1) consume_irq(g);
    if (passed(g, seqno)) return 0;
    /* Woken without our breadcrumb (or timed out): ask the device why. */
    if (failed(g, err)) return -EIO;
    if (ready != 1) return -ETIMEDOUT;
  }
}

uint32_t mgpu_wait_irq(struct mgpu *g, int timeout_ms) {
  struct pollfd p = {.fd = g->irq_fd, .events = POLLIN};
  if (poll(&p, 1, timeout_ms) != 1) return 0;
  consume_irq(g);
  uint32_t iir = mgpu_read(g, MGPU_REG_IIR);
  if (iir) mgpu_write(g, MGPU_REG_IIR, iir);
  return iir;
}

void mgpu_recover(struct mgpu *g) {
  mgpu_write(g, MGPU_REG_ENGINE_RESET, 1);
  mgpu_write(g, MGPU_REG_IIR, 0xffffffff);
  memset(g->slot_seqno, 0, sizeof g->slot_seqno);
}

/* ---- display ---------------------------------------------------------------- */

int mgpu_mode_set(struct mgpu *g, const struct mgpu_surface *s) {
  uint32_t offset = s->gma - g->pv.gm_base;
  if (s->gma < g->pv.gm_base || offset + (uint64_t)s->pitch * s->height > g->pv.lm_size) return -EINVAL;
  if (offset % s->pitch || s->width > g->pv.max_width || s->height > g->pv.max_height) return -EINVAL;
  if (dispi_read(g, MGPU_DISPI_ID) < MGPU_DISPI_ID5) return -ENODEV;
  dispi_write(g, MGPU_DISPI_ENABLE, 0);
  dispi_write(g, MGPU_DISPI_BPP, 32);
  dispi_write(g, MGPU_DISPI_XRES, s->width);
  dispi_write(g, MGPU_DISPI_YRES, s->height);
  dispi_write(g, MGPU_DISPI_ENABLE, MGPU_DISPI_ENABLED | MGPU_DISPI_LFB | MGPU_DISPI_NOCLEARMEM);
  dispi_write(g, MGPU_DISPI_VIRT_WIDTH, s->width);
  /* No base register in the Bochs model: scroll to the surface's first line. */
  dispi_write(g, MGPU_DISPI_Y_OFFSET, offset / s->pitch);
  if (dispi_read(g, MGPU_DISPI_XRES) != s->width || dispi_read(g, MGPU_DISPI_YRES) != s->height) return -EINVAL;
  return 0;
}

/* ---- checksums -------------------------------------------------------------- */

uint32_t mgpu_crc32(uint32_t crc, const uint8_t *p, size_t n) {
  static uint32_t table[256];
  if (!table[1])
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  crc = ~crc;
  while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t mgpu_surface_crc(const struct mgpu_surface *s) {
  /* Read the surface into ordinary memory first: BAR0 reads are slow one by one. */
  size_t n = (size_t)s->pitch * s->height;
  uint8_t *copy = malloc(n);
  if (!copy) return 0;
  memcpy(copy, s->cpu, n);
  uint32_t crc = mgpu_crc32(0, copy, n);
  free(copy);
  return crc;
}
