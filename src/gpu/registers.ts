/**
 * The parent GPU's MMIO register map (BAR-style offsets). One table, so the
 * device model, the native driver and the mediator's whitelist agree.
 */
export const Reg = {
  GPU_ID: 0x0000,
  GPU_CAPS: 0x0004,
  LOCAL_MEMORY_SIZE: 0x0008,
  GTT_ENTRIES: 0x000c,

  // Interrupts: raw status, mask, latched identity (write 1 to clear), enable.
  ISR: 0x0100,
  IMR: 0x0104,
  IIR: 0x0108,
  IER: 0x010c,

  // Display: Bochs/QEMU VBE "DISPI" registers as 16-bit MMIO at 0x500 + index * 2.
  DISPI: 0x0500,
  QEXT_SIZE: 0x0600,
  QEXT_BYTEORDER: 0x0604,
  /** Local-memory offset the display scans out from (the parent's own addition). */
  DISPLAY_BASE: 0x0700,
  VBLANK_COUNT: 0x0704,

  // Render engine (command streamer).
  RING_START: 0x2000,
  RING_HEAD: 0x2004,
  RING_TAIL: 0x2008,
  RING_CTL: 0x200c,
  ENGINE_STATUS: 0x2010,
  ENGINE_ERROR: 0x2014,
  ENGINE_ERROR_ADDR: 0x2018,
  ENGINE_RESET: 0x201c,
  BB_ADDR: 0x2020,
  /** General-purpose registers MI_LOAD_REGISTER_IMM may write (0x2100 + 4 * n, n < 16). */
  GPR0: 0x2100,

  // GTT fault reporting; the GTT itself is written through `Gtt`, or at GTT_BASE.
  FAULT_ADDR_LO: 0x3000,
  FAULT_ADDR_HI: 0x3004,
  GTT_BASE: 0x100000,
} as const;

export const GPR_COUNT = 16;
export const GPU_ID_VALUE = 0x4d475055; // "UPGM"

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

export const EngineStatus = {
  IDLE: 1 << 0,
  ERROR: 1 << 1,
  IN_BATCH: 1 << 2,
} as const;

/** Why the engine stopped (ENGINE_ERROR). */
export const EngineError = {
  NONE: 0,
  UNKNOWN_COMMAND: 1,
  GTT_FAULT: 2,
  BATCH_NESTING: 3,
  BAD_COMMAND: 4,
  RING_DISABLED: 5,
  BAD_REGISTER: 6,
} as const;

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
