/**
 * Register offsets and bits a driver programs. The Bochs display registers
 * and the engine registers sit at the same offsets in the parent GPU's MMIO
 * and in a vGPU's BAR2 (a driver for one drives the other); the rest of
 * `Bar2` is the vGPU's own. The parent's private registers live in `gpu/`.
 */

/** The Bochs display's MMIO layout (QEMU hw/display/bochs-display.c), in the parent and in BAR2. */
export const BochsMmio = {
  EDID: 0x000,
  VGA_IOPORTS: 0x400,
  /** DISPI registers as 16-bit MMIO at DISPI + index * 2. */
  DISPI: 0x500,
  /** QEMU's extension registers: their size, then the framebuffer byte order. */
  QEXT_SIZE: 0x600,
  QEXT_BYTEORDER: 0x604,
} as const;

/** Bytes of QEMU's extension block (what QEXT_SIZE reads). */
export const QEXT_BLOCK_SIZE = 8;

// DISPI register indexes (QEMU hw/display/vga_int.h, Linux drivers/gpu/drm/tiny/bochs.c).
export const Dispi = {
  ID: 0,
  XRES: 1,
  YRES: 2,
  BPP: 3,
  ENABLE: 4,
  BANK: 5,
  VIRT_WIDTH: 6,
  VIRT_HEIGHT: 7,
  X_OFFSET: 8,
  Y_OFFSET: 9,
  VIDEO_MEMORY_64K: 10,
  COUNT: 11,
} as const;

export const DISPI_ID5 = 0xb0c5;
export const DispiEnable = { ENABLED: 0x01, GETCAPS: 0x02, DAC8: 0x20, LFB: 0x40, NOCLEARMEM: 0x80 } as const;
export const QEXT_LITTLE_ENDIAN = 0x1e1e1e1e;
export const QEXT_BIG_ENDIAN = 0xbebebebe;

/** Render engine (command streamer) registers: the parent's, and the vGPU's virtual engine at the same offsets. */
export const EngineReg = {
  RING_START: 0x2000,
  RING_HEAD: 0x2004,
  RING_TAIL: 0x2008,
  RING_CTL: 0x200c,
  ENGINE_STATUS: 0x2010,
  ENGINE_ERROR: 0x2014,
  ENGINE_ERROR_ADDR: 0x2018,
  ENGINE_RESET: 0x201c,
  /** General-purpose registers MI_LOAD_REGISTER_IMM may write (GPR0 + 4 * n, n < GPR_COUNT). */
  GPR0: 0x2100,
} as const;

export const GPR_COUNT = 16;

/** A vGPU's BAR2: the Bochs display registers, the PV info block, the virtual engine and interrupts, the GTT. */
export const Bar2 = {
  ...BochsMmio,
  /** The paravirtual info block (`PvInfo`). */
  PV_INFO: 0x800,
  /** The virtual engine's register block starts here (its first register). */
  ENGINE: EngineReg.RING_START,
  ...EngineReg,
  // Virtual interrupts: raw status, mask, latched identity (write 1 to clear), enable.
  ISR: 0x3000,
  IMR: 0x3004,
  IIR: 0x3008,
  IER: 0x300c,
  /** The vGPU's GTT partition: 8-byte entries (`gtt.ts`), entry 0 maps the partition's first page. */
  GTT: 0x80000,
} as const;

export const BAR2_SIZE = 1 << 20;

/** Paravirtual info block ("MGPV") at `Bar2.PV_INFO`: read-only dwords. */
export const PvInfo = {
  MAGIC: 0x00,
  VERSION: 0x04,
  /** The slice's offset in the parent's local memory (64-bit). */
  LM_BASE_LO: 0x08,
  LM_BASE_HI: 0x0c,
  LM_SIZE: 0x10,
  /** The graphics-memory partition: the GMAs the guest's GTT entries map. */
  GM_BASE: 0x14,
  GM_SIZE: 0x18,
  /** Where the GTT window starts in BAR2, and how many entries it has. */
  GTT_OFFSET: 0x1c,
  GTT_ENTRIES: 0x20,
  MAX_WIDTH: 0x24,
  MAX_HEIGHT: 0x28,
} as const;

/** Interrupt bits: the parent's IIR, and a vGPU's virtual IIR (the same events). */
export const Irq = {
  USER: 1 << 0,
  FLUSH: 1 << 1,
  ENGINE_ERROR: 1 << 2,
  GTT_FAULT: 1 << 3,
  VBLANK: 1 << 4,
  IDLE: 1 << 5,
} as const;

export const RingCtl = {
  ENABLE: 1 << 0,
  /** Ring length in 4 KiB pages minus one, bits 12..20 (as Intel's RING_CTL). */
  lengthPages: (ctl: number) => ((ctl >>> 12) & 0x1ff) + 1,
  encode: (pages: number) => (((pages - 1) & 0x1ff) << 12) | 1,
} as const;

/** Bits of RING_TAIL (and RING_HEAD) that hold the offset: dword-aligned. */
export const RING_OFFSET_MASK = 0xfffffffc;

export const EngineStatus = {
  IDLE: 1 << 0,
  ERROR: 1 << 1,
  IN_BATCH: 1 << 2,
  /**
   * vGPU only: as much work waits as the vGPU may hold (`QueueLimits`); ring
   * commands past it stay unscanned, costing the host nothing, until earlier
   * submissions complete — tail moves meanwhile merge into the last waiting one.
   */
  QUEUE_FULL: 1 << 3,
} as const;

/** What one vGPU may have accepted and not completed (backpressure), and one submission's flattened size. */
export const QueueLimits = {
  /** Tail moves waiting to be scanned, and scanned submissions waiting for the engine, each. */
  SUBMISSIONS: 8,
  /** Flattened bytes accepted and not yet completed. */
  BYTES: 8 << 20,
  /** Most one submission may flatten to (the guest driver's 4 MiB batch); past it: REJECTED | runaway-batch. */
  SUBMISSION_BYTES: 4 << 20,
} as const;

/** ENGINE_RESET: writing this bit stops the engine, clears its error and empties the ring. */
export const ENGINE_RESET_BIT = 1;

/**
 * Why the engine stopped (ENGINE_ERROR). The parent's engine reports the low
 * codes; a vGPU adds its scanner's verdicts (REJECTED | `ScanRejectionCode`),
 * the watchdog's HANG (which counts time spent waiting for guest memory too),
 * and DMA_ERROR: guest memory the VMM serves by messages could not be staged
 * or written back (the VMM refused, unmapped it, or the submission touches more
 * than a vGPU may stage at once).
 */
export const EngineError = {
  NONE: 0,
  UNKNOWN_COMMAND: 1,
  GTT_FAULT: 2,
  BATCH_NESTING: 3,
  BAD_COMMAND: 4,
  RING_DISABLED: 5,
  BAD_REGISTER: 6,
  REJECTED: 0x100,
  HANG: 0x200,
  DMA_ERROR: 0x300,
} as const;

/** What the command scanner refused a submission for: the low byte of ENGINE_ERROR after REJECTED. */
export const ScanRejectionCode = {
  "unknown-command": 1,
  "privileged-command": 2,
  "register-not-allowed": 3,
  "address-outside-partition": 4,
  "malformed-command": 5,
  "runaway-batch": 6,
  "batch-nesting": 7,
  "gtt-fault": 8,
} as const;

export type ScanRejection = keyof typeof ScanRejectionCode;
