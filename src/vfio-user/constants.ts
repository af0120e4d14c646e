/** vfio-user commands and flags (spec "Commands" and "Header"), and the VFIO values they carry. */

export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;
export type CommandCode = (typeof Command)[keyof typeof Command];

const commandNames = new Map<number, string>(Object.entries(Command).map(([k, v]) => [v, k]));
export function commandName(command: number): string {
  return commandNames.get(command) ?? `UNKNOWN(${command})`;
}

export const HEADER_SIZE = 16;
export const FLAG_TYPE_MASK = 0xf;
export const FLAG_TYPE_COMMAND = 0x0;
export const FLAG_TYPE_REPLY = 0x1;
export const FLAG_NO_REPLY = 0x10;
export const FLAG_ERROR = 0x20;

/** Protocol version spoken (the spec's current, as QEMU and libvfio-user speak it). */
export const VERSION_MAJOR = 0;
export const VERSION_MINOR = 0;

/** Spec defaults for capabilities a peer leaves out. */
export const DEFAULT_MAX_MSG_FDS = 1;
export const DEFAULT_MAX_DATA_XFER_SIZE = 1 << 20;
export const DEFAULT_MAX_DMA_MAPS = 65535;
export const DEFAULT_PGSIZES = 4096;

// <linux/vfio.h>
export const DEVICE_FLAGS_RESET = 1 << 0;
export const DEVICE_FLAGS_PCI = 1 << 1;

export const REGION_INFO_FLAG_READ = 1 << 0;
export const REGION_INFO_FLAG_WRITE = 1 << 1;
export const REGION_INFO_FLAG_MMAP = 1 << 2;
export const REGION_INFO_FLAG_CAPS = 1 << 3;
export const REGION_INFO_CAP_SPARSE_MMAP = 1;
export const REGION_INFO_CAP_TYPE = 2;

export const PciRegion = {
  BAR0: 0,
  BAR1: 1,
  BAR2: 2,
  BAR3: 3,
  BAR4: 4,
  BAR5: 5,
  ROM: 6,
  CONFIG: 7,
  VGA: 8,
} as const;
export const PCI_NUM_REGIONS = 9;

export const PciIrq = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4 } as const;
export const PCI_NUM_IRQS = 5;

export const IRQ_INFO_EVENTFD = 1 << 0;
export const IRQ_INFO_MASKABLE = 1 << 1;
export const IRQ_INFO_AUTOMASKED = 1 << 2;
export const IRQ_INFO_NORESIZE = 1 << 3;

export const IRQ_SET_DATA_NONE = 1 << 0;
export const IRQ_SET_DATA_BOOL = 1 << 1;
export const IRQ_SET_DATA_EVENTFD = 1 << 2;
export const IRQ_SET_ACTION_MASK = 1 << 3;
export const IRQ_SET_ACTION_UNMASK = 1 << 4;
export const IRQ_SET_ACTION_TRIGGER = 1 << 5;
export const IRQ_SET_DATA_TYPE_MASK = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD;
export const IRQ_SET_ACTION_TYPE_MASK = IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

export const DMA_FLAG_READ = 1 << 0;
export const DMA_FLAG_WRITE = 1 << 1;
export const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
export const DMA_UNMAP_FLAG_ALL = 1 << 1;

export const IO_FD_TYPE_IOEVENTFD = 0;
export const IO_FD_TYPE_IOREGIONFD = 1;

export const DEVICE_FEATURE_MASK = 0xffff;
export const DEVICE_FEATURE_GET = 1 << 16;
export const DEVICE_FEATURE_SET = 1 << 17;
export const DEVICE_FEATURE_PROBE = 1 << 18;
export const Feature = {
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
} as const;

export const MIGRATION_STOP_COPY = 1 << 0;
export const MIGRATION_P2P = 1 << 1;
export const MIGRATION_PRE_COPY = 1 << 2;

export const MigState = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
} as const;
export type MigStateCode = (typeof MigState)[keyof typeof MigState];
