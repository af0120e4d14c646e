/*
 * mgputool: the guest side of the end-to-end tests and of `npm run bench -- guest`,
 * built on the mgpu driver. Output is KEY=value lines.
 *
 *   mgputool info    BDF                     partition, trap latency
 *   mgputool suite   BDF TABLE [TTY]         every workload of TABLE: checksum, then timed;
 *                                            with TTY, waits for the host after the desktop
 *                                            frame is on the display (HOST_WAIT=scanout), and
 *                                            with MGPU_HOST_EACH=1 also before each timed run
 *                                            (HOST_WAIT=timed-NAME); MGPU_ROUNDS timed runs each
 *                                            (default 1) of MGPU_MIN_SECONDS (default 0.4)
 *   mgputool hostile BDF TTY                 each hostile stream, its verdict, recovery
 *   mgputool victim  BDF TABLE TTY           desktop frame on the display, then idle until the
 *                                            host says so; checks itself again
 *   mgputool contend BDF TTY SECONDS MIB OPS keeps the engine busy with fills for SECONDS
 *
 * TABLE is the workload suite written out by the host from the project's one
 * definition (src/gpu/workloads.ts); TTY is a serial line the host writes "go" to
 * (after HOST_WAIT=label has been printed).
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "mgpu.h"

#define SYS_BYTES (4u << 20)
#define TIMEOUT_MS 20000

static void key(const char *prefix, const char *name, char *out, size_t n) {
  size_t i = snprintf(out, n, "%s", prefix);
  for (; *name && i + 1 < n; name++) out[i++] = isalnum((unsigned char)*name) ? toupper((unsigned char)*name) : '_';
  out[i] = 0;
}

/* ---- the host's serial line ------------------------------------------------- */

static void wait_host(const char *tty, const char *label) {
  int fd = open(tty, O_RDWR | O_NOCTTY);
  if (fd < 0) {
    printf("ERROR=open %s: %s\n", tty, strerror(errno));
    exit(1);
  }
  struct termios t;
  if (tcgetattr(fd, &t) == 0) {
    cfmakeraw(&t);
    tcsetattr(fd, TCSANOW, &t);
  }
  printf("HOST_WAIT=%s\n", label);
  fflush(stdout);
  char c;
  for (;;) {
    ssize_t n = read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == '\n') break;
  }
  close(fd);
}

/* MSIs the guest kernel took for us (its vfio-msi line in /proc/interrupts), summed over CPUs. */
static unsigned long long kernel_msi_count(void) {
  FILE *f = fopen("/proc/interrupts", "r");
  char line[1024];
  unsigned long long total = 0;
  while (f && fgets(line, sizeof line, f)) {
    if (!strstr(line, "vfio-msi")) continue;
    char *p = strchr(line, ':');
    for (p = p ? p + 1 : line;;) {
      char *end;
      unsigned long long v = strtoull(p, &end, 10);
      if (end == p) break;
      total += v;
      p = end;
    }
  }
  if (f) fclose(f);
  return total;
}

/* ---- the workload table ----------------------------------------------------- */

#define MAX_SURF 4
#define MAX_OPS 512

struct op {
  int copy, src, dst;
  uint32_t sx, sy, x, y, w, h, color;
};

struct workload {
  char name[64];
  uint64_t bytes;
  int output;
  int nsurf;
  char surf_name[MAX_SURF][64];
  uint32_t surf_w[MAX_SURF], surf_h[MAX_SURF];
  int nsetup, nops;
  struct op setup[MAX_OPS], ops[MAX_OPS];
};

static int surface_index(struct workload *w, const char *name) {
  for (int i = 0; i < w->nsurf; i++)
    if (!strcmp(w->surf_name[i], name)) return i;
  return -1;
}

/* Lines: workload NAME BYTES OUTPUT | surface NAME W H | setup|op fill DST X Y W H COLOR |
 * setup|op copy SRC DST SX SY X Y W H | end */
static int load_table(const char *path, struct workload **out) {
  FILE *f = fopen(path, "r");
  if (!f) return printf("ERROR=open %s: %s\n", path, strerror(errno)), -1;
  int n = 0, cap = 16;
  struct workload *all = calloc(cap, sizeof *all), *w = NULL;
  char line[512], a[64], b[64], c[64];
  while (fgets(line, sizeof line, f)) {
    unsigned long long bytes;
    struct op o = {0};
    if (sscanf(line, "workload %63s %llu %63s", a, &bytes, b) == 3) {
      if (n == cap) all = realloc(all, (cap *= 2) * sizeof *all);
      w = &all[n++];
      memset(w, 0, sizeof *w);
      snprintf(w->name, sizeof w->name, "%s", a);
      w->bytes = bytes;
      w->output = -1;
    } else if (w && sscanf(line, "surface %63s %u %u", a, &o.w, &o.h) == 3 && w->nsurf < MAX_SURF) {
      int i = w->nsurf++;
      snprintf(w->surf_name[i], sizeof w->surf_name[i], "%s", a);
      w->surf_w[i] = o.w;
      w->surf_h[i] = o.h;
    } else if (w && sscanf(line, "%63s fill %63s %u %u %u %u %x", c, a, &o.x, &o.y, &o.w, &o.h, &o.color) == 7) {
      o.dst = surface_index(w, a);
      int setup = !strcmp(c, "setup");
      if (o.dst < 0 || (setup ? w->nsetup : w->nops) >= MAX_OPS) goto bad;
      (setup ? w->setup : w->ops)[setup ? w->nsetup++ : w->nops++] = o;
    } else if (w && sscanf(line, "%63s copy %63s %63s %u %u %u %u %u %u", c, a, b, &o.sx, &o.sy, &o.x, &o.y, &o.w,
                           &o.h) == 9) {
      o.copy = 1;
      o.src = surface_index(w, a);
      o.dst = surface_index(w, b);
      int setup = !strcmp(c, "setup");
      if (o.src < 0 || o.dst < 0 || (setup ? w->nsetup : w->nops) >= MAX_OPS) goto bad;
      (setup ? w->setup : w->ops)[setup ? w->nsetup++ : w->nops++] = o;
    } else if (w && sscanf(line, "end %63s", a) == 1) {
      w->output = surface_index(w, a);
      if (w->output < 0) goto bad;
    } else if (line[0] != '\n' && line[0] != '#') {
      goto bad;
    }
  }
  fclose(f);
  *out = all;
  return n;
bad:
  printf("ERROR=bad workload table line: %s", line);
  fclose(f);
  free(all);
  return -1;
}

static unsigned encode(const struct op *ops, int n, const struct mgpu_surface *s, uint32_t *out) {
  unsigned dw = 0;
  for (int i = 0; i < n; i++) {
    const struct op *o = &ops[i];
    dw += o->copy ? mgpu_xy_src_copy_blt(out + dw, &s[o->dst], o->x, o->y, o->w, o->h, &s[o->src], o->sx, o->sy)
                  : mgpu_xy_color_blt(out + dw, &s[o->dst], o->x, o->y, o->w, o->h, o->color);
  }
  return dw;
}

static int open_or_die(struct mgpu *g, const char *bdf) {
  int r = mgpu_open(g, bdf, SYS_BYTES);
  if (r) {
    printf("ERROR=mgpu_open: %s\n", strerror(-r));
    exit(1);
  }
  printf("BOUND=%s\n", bdf);
  printf("PV_VERSION=%u\nLM_BASE=0x%llx\nLM_SIZE=%u\nGM_BASE=0x%x\nGM_SIZE=%u\nGTT_ENTRIES=%u\n", g->pv.version,
         (unsigned long long)g->pv.lm_base, g->pv.lm_size, g->pv.gm_base, g->pv.gm_size, g->pv.gtt_entries);
  return 0;
}

/* Runs one batch (at most a slot) and waits for it. */
static int run_batch(struct mgpu *g, const struct op *ops, int n, const struct mgpu_surface *s,
                     struct mgpu_error *err) {
  unsigned slot;
  uint32_t *b = mgpu_slot(g, &slot, TIMEOUT_MS, err);
  if (!b) return -EIO;
  uint32_t seqno = mgpu_submit(g, slot, encode(ops, n, s, b));
  return seqno ? mgpu_wait(g, seqno, TIMEOUT_MS, err) : -ENOSPC;
}

/* Trapped register access as the guest pays for it: a read waits for the device, a write is posted. */
static void trap_latency(struct mgpu *g) {
  const int n = 2000;
  double t0 = mgpu_now();
  for (int i = 0; i < n; i++) mgpu_read(g, MGPU_BAR2_PV_INFO + MGPU_PV_MAGIC);
  double t1 = mgpu_now();
  for (int i = 0; i < n; i++) mgpu_write(g, MGPU_REG_GPR0, i);
  double t2 = mgpu_now();
  mgpu_read(g, MGPU_BAR2_PV_INFO + MGPU_PV_MAGIC); /* the posted writes have all arrived */
  double t3 = mgpu_now();
  printf("TRAP_READ_US=%.2f\nTRAP_WRITE_US=%.2f\nTRAP_WRITE_DRAIN_US=%.2f\n", (t1 - t0) * 1e6 / n,
         (t2 - t1) * 1e6 / n, (t3 - t2) * 1e6);
}

static int cmd_info(const char *bdf) {
  struct mgpu g;
  open_or_die(&g, bdf);
  trap_latency(&g);
  mgpu_close(&g);
  return 0;
}

/* Setup and one run (the host checks the result), then as many pipelined runs as fit in min_s. */
static int run_workload(struct mgpu *g, struct workload *w, double min_s, const char *host_each) {
  char k[96];
  struct mgpu_surface s[MAX_SURF];
  struct mgpu_error err = {0};
  mgpu_lm_reset(g);
  for (int i = 0; i < w->nsurf; i++)
    if (mgpu_alloc_surface(g, w->surf_w[i], w->surf_h[i], &s[i])) {
      key("SKIP_", w->name, k, sizeof k);
      printf("%s=no room in local memory\n", k);
      return 0;
    }
  int r = w->nsetup ? run_batch(g, w->setup, w->nsetup, s, &err) : 0;
  if (!r) r = run_batch(g, w->ops, w->nops, s, &err);
  if (r) {
    key("FAILED_", w->name, k, sizeof k);
    printf("%s=%d code=0x%x addr=0x%x\n", k, r, err.code, err.address);
    return -1;
  }
  key("CRC_", w->name, k, sizeof k);
  printf("%s=0x%08x\n", k, mgpu_surface_crc(&s[w->output]));

  /* The same batch in every slot; each submission adds only its breadcrumb and a tail write. */
  static uint32_t batch[MAX_OPS * 10];
  unsigned ndw = encode(w->ops, w->nops, s, batch);
  for (unsigned i = 0; i < MGPU_SLOTS; i++)
    memcpy(g->sys + 2 * MGPU_RING_BYTES + (size_t)i * MGPU_SLOT_BYTES, batch, ndw * 4);
  int rounds = getenv("MGPU_ROUNDS") ? atoi(getenv("MGPU_ROUNDS")) : 1;
  for (int round = 0; round < rounds; round++) {
    /* The host may measure the native driver on the same workload now, while we are idle. */
    if (host_each) {
      key("timed-", w->name, k, sizeof k);
      for (char *c = k; *c; c++) *c = *c == '_' ? '-' : tolower((unsigned char)*c);
      wait_host(host_each, k);
    }
    uint64_t traps0 = g->reads + g->writes, irqs0 = g->irqs, wake0 = g->wakeups;
    uint32_t last = 0;
    long iters = 0;
    double t0 = mgpu_now(), t = t0;
    /* Half the slots per tail write, the other half still queued on the device meanwhile. */
    const unsigned group = MGPU_SLOTS / 2;
    while (t - t0 < min_s || iters < 8) {
      unsigned j = 0, slot;
      for (; j < group && mgpu_slot(g, &slot, TIMEOUT_MS, &err); j++, iters++)
        last = mgpu_queue(g, slot, ndw, j == group - 1);
      if (j < group) break;
      mgpu_kick(g);
      t = mgpu_now();
    }
    r = mgpu_wait(g, last, TIMEOUT_MS, &err);
    double dt = mgpu_now() - t0;
    if (r || err.code) {
      key("FAILED_", w->name, k, sizeof k);
      printf("%s=timed code=0x%x\n", k, err.code);
      return -1;
    }
    key("RUN_", w->name, k, sizeof k);
    printf("%s=round=%d iters=%ld seconds=%.4f per_s=%.2f mb_s=%.2f traps_per_iter=%.3f irqs_per_iter=%.3f "
           "wakeups_per_iter=%.3f\n",
           k, round, iters, dt, iters / dt, w->bytes * (double)iters / dt / 1e6,
           (double)(g->reads + g->writes - traps0) / iters, (double)(g->irqs - irqs0) / iters,
           (double)(g->wakeups - wake0) / iters);
  }
  return 0;
}

static int cmd_suite(const char *bdf, const char *table, const char *tty) {
  struct workload *ws;
  int n = load_table(table, &ws);
  if (n < 0) return 1;
  struct mgpu g;
  open_or_die(&g, bdf);
  trap_latency(&g);
  double min_s = getenv("MGPU_MIN_SECONDS") ? atof(getenv("MGPU_MIN_SECONDS")) : 0.4;
  int failures = 0;
  for (int i = 0; i < n; i++) {
    struct workload *w = &ws[i];
    if (run_workload(&g, w, min_s, getenv("MGPU_HOST_EACH") ? tty : NULL)) failures++;
    if (!strcmp(w->name, "desktop-frame")) {
      /* The frame is at local-memory offset 0 (the first surface): show it. */
      struct mgpu_surface screen = {.gma = g.pv.gm_base, .width = w->surf_w[w->output],
                                    .height = w->surf_h[w->output], .pitch = w->surf_w[w->output] * 4};
      int r = mgpu_mode_set(&g, &screen);
      printf("MODE_SET=%s\n", r ? strerror(-r) : "ok");
      if (tty) wait_host(tty, "scanout");
    }
  }
  printf("KERNEL_MSI=%llu\n", kernel_msi_count());
  printf("SUITE_FAILURES=%d\nGUEST_IRQS=%llu\nGUEST_WAKEUPS=%llu\nGUEST_TRAPS=%llu\n", failures,
         (unsigned long long)g.irqs, (unsigned long long)g.wakeups, (unsigned long long)(g.reads + g.writes));
  mgpu_close(&g);
  free(ws);
  return failures ? 1 : 0;
}

/* ---- hostile streams ---------------------------------------------------------- */

struct verdict {
  int status; /* mgpu_wait's result */
  struct mgpu_error err;
  double ms;
};

static void report(struct mgpu *g, const char *name, struct verdict v, const struct mgpu_surface *probe) {
  char k[96];
  key("H_", name, k, sizeof k);
  printf("%s=status=%d code=0x%x iir=0x%x addr=0x%x ms=%.1f\n", k, v.status, v.err.code, v.err.iir, v.err.address,
         v.ms);
  /* Contained: after a reset our own work runs again. */
  mgpu_recover(g);
  struct op fill = {.dst = 0, .x = 0, .y = 0, .w = probe->width, .h = 1, .color = 0xff00aa55};
  struct mgpu_error err = {0};
  int r = run_batch(g, &fill, 1, probe, &err);
  key("R_", name, k, sizeof k);
  printf("%s=%s\n", k, r ? "failed" : "ok");
}

/* Submits a slot holding `dw` dwords exactly as written (plus the breadcrumb) and waits. */
static struct verdict submit_words(struct mgpu *g, const uint32_t *words, unsigned n) {
  struct verdict v = {0};
  unsigned slot;
  double t0 = mgpu_now();
  uint32_t *b = mgpu_slot(g, &slot, TIMEOUT_MS, &v.err);
  if (!b) return v.status = -EIO, v;
  memcpy(b, words, n * 4);
  uint32_t seqno = mgpu_submit(g, slot, n);
  v.status = mgpu_wait(g, seqno, TIMEOUT_MS, &v.err);
  v.ms = (mgpu_now() - t0) * 1e3;
  return v;
}

static int cmd_hostile(const char *bdf, const char *tty) {
  struct mgpu g;
  open_or_die(&g, bdf);
  wait_host(tty, "hostile");
  struct mgpu_surface probe, big;
  uint32_t big_h = (g.pv.lm_size / 2) / 4096;
  if (mgpu_alloc_surface(&g, 1024, 4, &probe) || mgpu_alloc_surface(&g, 1024, big_h, &big)) {
    printf("ERROR=no local memory\n");
    return 1;
  }
  uint32_t w[64];
  unsigned n;
  struct verdict v;
  uint32_t lm_pages = g.pv.lm_size / 4096;

  /* 1. GTT entries aimed outside the slice: the next slice of local memory, host memory, a far page. */
  uint32_t spare = lm_pages - 1; /* a GTT index in our range that the allocator has not mapped */
  mgpu_gtt_set(&g, spare, g.pv.lm_base + g.pv.lm_size, 0);
  uint32_t iir = mgpu_wait_irq(&g, TIMEOUT_MS);
  printf("H_GTT_NEXT_SLICE_IRQ=0x%x\n", iir);
  mgpu_gtt_set(&g, spare, 0, 0);
  printf("H_GTT_HOST_MEMORY_IRQ=0x%x\n", mgpu_wait_irq(&g, TIMEOUT_MS));
  mgpu_gtt_set(&g, spare, 1ull << 44, 1);
  printf("H_GTT_SYSTEM_RANGE_IRQ=0x%x\n", mgpu_wait_irq(&g, TIMEOUT_MS));
  /* The refused entry maps nothing: drawing through it faults on the engine. */
  struct mgpu_surface refused = {.gma = g.pv.gm_base + spare * 4096, .width = 1024, .height = 1, .pitch = 4096};
  n = mgpu_xy_color_blt(w, &refused, 0, 0, 1024, 1, 0xffff0000);
  v = submit_words(&g, w, n);
  report(&g, "gtt-refused-use", v, &probe);
  /* A system page at an IOVA nobody mapped: accepted as an entry, faults when used. */
  mgpu_gtt_set(&g, spare, 0x7000000000ull, 1);
  v = submit_words(&g, w, n);
  report(&g, "gtt-unmapped-iova", v, &probe);
  mgpu_gtt_set(&g, spare, g.pv.lm_base + (uint64_t)spare * 4096, 0); /* put it right */

  /* 2. Privileged register writes from a command stream, and MMIO to registers the vGPU has not. */
  n = 0;
  w[n++] = (MGPU_MI_LOAD_REGISTER_IMM << 23) | 1;
  w[n++] = MGPU_REG_RING_START;
  w[n++] = 0;
  report(&g, "lri-ring-start", submit_words(&g, w, n), &probe);
  n = 0;
  w[n++] = (MGPU_MI_LOAD_REGISTER_IMM << 23) | 1;
  w[n++] = MGPU_PARENT_GTT_BASE;
  w[n++] = 0xffffffff;
  report(&g, "lri-gtt", submit_words(&g, w, n), &probe);
  mgpu_write(&g, MGPU_PARENT_DISPLAY_BASE, 0x1000000);
  mgpu_write(&g, MGPU_REG_RING_START + 0x40, 0xdeadbeef);
  printf("H_MMIO_UNKNOWN=0x%x,0x%x\n", mgpu_read(&g, MGPU_PARENT_DISPLAY_BASE),
         mgpu_read(&g, MGPU_REG_RING_START + 0x40));
  /* An MI command the scanner does not allow guests (opcode 0x3f). */
  w[0] = 0x3fu << 23;
  report(&g, "privileged-command", submit_words(&g, w, 1), &probe);

  /* 3. Runaway batch chains: a batch that starts itself. */
  {
    unsigned slot;
    uint32_t *b = mgpu_slot(&g, &slot, TIMEOUT_MS, NULL);
    uint32_t gma = g.sys_gma + 2 * MGPU_RING_BYTES + slot * MGPU_SLOT_BYTES;
    mgpu_bb_start(b, gma, 0);
    double t0 = mgpu_now();
    uint32_t seqno = mgpu_submit(&g, slot, 3);
    v = (struct verdict){0};
    v.status = mgpu_wait(&g, seqno, TIMEOUT_MS, &v.err);
    v.ms = (mgpu_now() - t0) * 1e3;
    report(&g, "runaway-chain", v, &probe);
  }
  /* Nested too deep: second-level starts from a second-level batch. */
  {
    uint32_t *a = (uint32_t *)g.big, *b2 = (uint32_t *)(g.big + 4096);
    mgpu_bb_start(a, g.big_gma + 4096, 1);
    mgpu_bb_start(b2, g.big_gma + 8192, 1);
    ((uint32_t *)(g.big + 8192))[0] = MGPU_MI_BATCH_BUFFER_END << 23;
    n = mgpu_bb_start(w, g.big_gma, 1);
    report(&g, "batch-nesting", submit_words(&g, w, n), &probe);
  }

  /* 4. Blits outside the partition: into the next partition, from the host's memory, rows past the end. */
  struct mgpu_surface next = {.gma = g.pv.gm_base + g.pv.gm_size, .width = 1024, .height = 16, .pitch = 4096};
  struct mgpu_surface host = {.gma = 0, .width = 1024, .height = 16, .pitch = 4096};
  n = mgpu_xy_color_blt(w, &next, 0, 0, 1024, 16, 0xffff00ff);
  report(&g, "blit-next-partition", submit_words(&g, w, n), &probe);
  n = mgpu_xy_src_copy_blt(w, &probe, 0, 0, 1024, 4, &host, 0, 0);
  report(&g, "copy-from-host", submit_words(&g, w, n), &probe);
  n = mgpu_xy_color_blt(w, &big, 0, 0, 1024, g.pv.gm_size / 4096, 0xff0000ff);
  report(&g, "blit-rows-past-end", submit_words(&g, w, n), &probe);
  struct mgpu_surface nopitch = probe;
  nopitch.pitch = 0;
  n = mgpu_xy_color_blt(w, &nopitch, 0, 0, 16, 1, 0);
  report(&g, "malformed-blit", submit_words(&g, w, n), &probe);

  /* 5. A ring placed outside the partition. */
  mgpu_write(&g, MGPU_REG_RING_CTL, 0);
  mgpu_write(&g, MGPU_REG_RING_START, g.pv.gm_base + g.pv.gm_size);
  mgpu_write(&g, MGPU_REG_RING_CTL, ((MGPU_RING_BYTES / 4096 - 1) << MGPU_RING_CTL_LENGTH_SHIFT) | 1);
  mgpu_write(&g, MGPU_REG_RING_TAIL, 16);
  v = (struct verdict){0};
  v.err.iir = mgpu_wait_irq(&g, TIMEOUT_MS);
  v.err.code = mgpu_read(&g, MGPU_REG_ENGINE_ERROR);
  v.status = v.err.code ? -EIO : 0;
  mgpu_write(&g, MGPU_REG_ENGINE_RESET, 1);
  mgpu_write(&g, MGPU_REG_RING_CTL, 0);
  mgpu_write(&g, MGPU_REG_RING_START, g.ring_gma);
  mgpu_write(&g, MGPU_REG_RING_CTL, ((MGPU_RING_BYTES / 4096 - 1) << MGPU_RING_CTL_LENGTH_SHIFT) | 1);
  mgpu_write(&g, MGPU_REG_RING_TAIL, 0); /* the ring starts over empty: tail and head agree at 0 */
  g.tail = 0;
  report(&g, "ring-outside", v, &probe);

  /* 6. A hung batch: far more work than the watchdog allows one submission. */
  {
    uint32_t *b = (uint32_t *)g.big;
    unsigned count = 60000, dw = 0;
    if ((count * 7 + 8) * 4 > g.big_size) count = g.big_size / 28 - 8;
    for (unsigned i = 0; i < count; i++) dw += mgpu_xy_color_blt(b + dw, &big, 0, 0, 1024, big_h, 0xff000000 | i);
    b[dw++] = MGPU_MI_STORE_DATA_IMM << 23 | (1u << 22) | 2;
    b[dw++] = g.hwsp_gma;
    b[dw++] = 0;
    b[dw++] = ++g.seqno;
    b[dw++] = MGPU_MI_USER_INTERRUPT << 23;
    b[dw++] = MGPU_MI_BATCH_BUFFER_END << 23;
    double t0 = mgpu_now();
    mgpu_submit_raw(&g, g.big_gma, 0, -1);
    v = (struct verdict){0};
    v.status = mgpu_wait(&g, g.seqno, 60000, &v.err);
    v.ms = (mgpu_now() - t0) * 1e3;
    printf("H_HANG_FILLS=%u\n", count);
    report(&g, "hung-batch", v, &probe);
  }
  printf("HOSTILE_IRQS=%llu\nHOSTILE_DONE=1\n", (unsigned long long)g.irqs);
  fflush(stdout);
  mgpu_close(&g);
  return 0;
}

/* ---- a victim: its display and memory must not change ----------------------- */

static int cmd_victim(const char *bdf, const char *table, const char *tty) {
  struct workload *ws;
  int n = load_table(table, &ws);
  if (n < 0) return 1;
  struct workload *w = NULL;
  for (int i = 0; i < n; i++)
    if (!strcmp(ws[i].name, "desktop-frame")) w = &ws[i];
  if (!w) return printf("ERROR=no desktop-frame in the table\n"), 1;
  struct mgpu g;
  open_or_die(&g, bdf);
  struct mgpu_surface s[MAX_SURF];
  struct mgpu_error err = {0};
  for (int i = 0; i < w->nsurf; i++) mgpu_alloc_surface(&g, w->surf_w[i], w->surf_h[i], &s[i]);
  if (run_batch(&g, w->setup, w->nsetup, s, &err) || run_batch(&g, w->ops, w->nops, s, &err))
    return printf("ERROR=desktop frame failed: 0x%x\n", err.code), 1;
  printf("VICTIM_MODE_SET=%s\n", mgpu_mode_set(&g, &s[w->output]) ? "failed" : "ok");
  printf("VICTIM_CRC_BEFORE=0x%08x\n", mgpu_surface_crc(&s[w->output]));
  uint64_t irqs = g.irqs;
  wait_host(tty, "victim");
  printf("VICTIM_CRC_AFTER=0x%08x\n", mgpu_surface_crc(&s[w->output]));
  printf("VICTIM_ENGINE_ERROR=0x%x\n", mgpu_read(&g, MGPU_REG_ENGINE_ERROR));
  printf("VICTIM_IIR=0x%x\n", mgpu_read(&g, MGPU_REG_IIR));
  /* Interrupts that reached us meanwhile (none should: we submitted nothing). */
  uint64_t pending = 0;
  int fl = fcntl(g.irq_fd, F_GETFL);
  fcntl(g.irq_fd, F_SETFL, fl | O_NONBLOCK);
  if (read(g.irq_fd, &pending, 8) != 8) pending = 0;
  printf("VICTIM_IRQS_DURING=%llu\n", (unsigned long long)(g.irqs - irqs + pending));
  /* And it still works. */
  printf("VICTIM_STILL_RENDERS=%s\n", run_batch(&g, w->ops, w->nops, s, &err) ? "no" : "yes");
  mgpu_close(&g);
  free(ws);
  return 0;
}

/* ---- contention: keep our share of the engine busy -------------------------- */

static int cmd_contend(const char *bdf, const char *tty, double seconds, unsigned mib, unsigned ops) {
  struct mgpu g;
  open_or_die(&g, bdf);
  struct mgpu_surface s;
  if (mgpu_alloc_surface(&g, 1024, mib * 256, &s)) return printf("ERROR=no local memory\n"), 1;
  uint32_t batch[MAX_OPS * 7];
  unsigned ndw = 0;
  if (ops > MAX_OPS) ops = MAX_OPS;
  for (unsigned i = 0; i < ops; i++) ndw += mgpu_xy_color_blt(batch + ndw, &s, 0, 0, 1024, mib * 256, 0xff000000 | i);
  for (unsigned i = 0; i < MGPU_SLOTS; i++)
    memcpy(g.sys + 2 * MGPU_RING_BYTES + (size_t)i * MGPU_SLOT_BYTES, batch, ndw * 4);
  wait_host(tty, "contend");
  struct mgpu_error err = {0};
  long batches = 0;
  uint32_t last = 0;
  double t0 = mgpu_now();
  while (mgpu_now() - t0 < seconds) {
    unsigned slot;
    if (!mgpu_slot(&g, &slot, TIMEOUT_MS, &err)) break;
    last = mgpu_submit(&g, slot, ndw);
    batches++;
  }
  int r = mgpu_wait(&g, last, TIMEOUT_MS, &err);
  double dt = mgpu_now() - t0;
  printf("CONTEND_STATUS=%d\nCONTEND_BATCHES=%ld\nCONTEND_SECONDS=%.3f\nCONTEND_MB_S=%.1f\nCONTEND_IRQS=%llu\n", r,
         batches, dt, batches * (double)ops * mib * 1.048576 / dt, (unsigned long long)g.irqs);
  mgpu_close(&g);
  return r ? 1 : 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 3 && !strcmp(argv[1], "info")) return cmd_info(argv[2]);
  if (argc >= 4 && !strcmp(argv[1], "suite")) return cmd_suite(argv[2], argv[3], argc >= 5 ? argv[4] : NULL);
  if (argc >= 4 && !strcmp(argv[1], "hostile")) return cmd_hostile(argv[2], argv[3]);
  if (argc >= 5 && !strcmp(argv[1], "victim")) return cmd_victim(argv[2], argv[3], argv[4]);
  if (argc >= 7 && !strcmp(argv[1], "contend"))
    return cmd_contend(argv[2], argv[3], atof(argv[4]), strtoul(argv[5], NULL, 0), strtoul(argv[6], NULL, 0));
  fprintf(stderr, "usage: see the comment at the top of mgputool.c\n");
  return 2;
}
