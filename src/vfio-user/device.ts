/**
 * The seam between the protocol and a device: the server decodes each command
 * and calls one of these methods; a method that throws VfioUserError makes the
 * server reply with that errno. The PCI toolkit (src/pci/) implements this
 * interface; so can any other device.
 */
import type { Capabilities } from "./capabilities.js";
import type { VfioUserError } from "./errors.js";
import type {
  DeviceInfo,
  DmaMapRequest,
  DmaUnmapRequest,
  IoFdSubRegion,
  IrqInfo,
  RegionInfo,
  SetIrqsRequest,
} from "./messages.js";

/** One contiguous piece of a scatter-gather DMA: client address and our bytes. */
export interface DmaPiece {
  readonly address: bigint;
  readonly bytes: Uint8Array;
}

/** Called once when an asynchronous DMA completes: no error, or why it failed (ETIMEDOUT, the client's errno). */
export type DmaDone = (error?: VfioUserError) => void;

/** What the device may do toward the client that is connected to it. */
export interface DeviceSession {
  /** What the client told us it accepts. */
  readonly peer: Capabilities;
  /** Reads client memory with DMA_READ messages (for regions mapped without an fd). */
  dmaRead(address: bigint, out: Uint8Array): void;
  /** Writes client memory with DMA_WRITE messages. */
  dmaWrite(address: bigint, data: Uint8Array): void;
  /**
   * Reads client memory without waiting: every piece's DMA_READ goes out at
   * once (pipelined, at most max_data_xfer_size each) and the loop goes on
   * serving everyone; `done` runs on the loop when the last reply is in, on the
   * first failure, or after the reply timeout (the server's, or `timeoutMs` if
   * shorter: a device's own deadline, e.g. its watchdog's time left). The bytes
   * must stay valid until then.
   */
  dmaReadAsync(pieces: readonly DmaPiece[], done: DmaDone, timeoutMs?: number): void;
  /** The same for DMA_WRITE. */
  dmaWriteAsync(pieces: readonly DmaPiece[], done: DmaDone, timeoutMs?: number): void;
  /** Most DMA mappings this client may hold (a DMA_MAP past it gets ENOSPC). */
  readonly maxDmaMappings: number;
}

export interface RegionDescription extends RegionInfo {
  /** The fd the client mmaps (sent with the reply when the region has FLAG_MMAP). */
  readonly fd?: number;
}

export interface FeatureResult {
  /** Data to append after argsz/flags in the reply (GET). */
  readonly data?: Uint8Array;
}

/**
 * A device served over vfio-user. File descriptors passed in are owned by the
 * device once the method returns normally; if it throws, the server closes them.
 * Buffer arguments are views into the connection's native buffers, valid only
 * during the call.
 */
export interface VfioDevice {
  deviceInfo(): DeviceInfo;
  regionInfo(index: number): RegionDescription;
  irqInfo(index: number): IrqInfo;
  setIrqs(request: SetIrqsRequest, eventfds: readonly number[]): void;
  /** Reads `count` bytes at `offset` of a region into out[outOffset…]. */
  regionRead(region: number, offset: number, count: number, out: Uint8Array, outOffset: number): void;
  /** Writes data[dataOffset…dataOffset+count) at `offset` of a region. */
  regionWrite(region: number, offset: number, count: number, data: Uint8Array, dataOffset: number): void;
  dmaMap(request: DmaMapRequest, fd: number | undefined): void;
  /** Returns the dirty bitmap when the request asks for one. */
  dmaUnmap(request: DmaUnmapRequest): Uint8Array | void;
  reset(): void;
  /** DEVICE_GET_REGION_IO_FDS; absent means the device offers none (EINVAL). */
  regionIoFds?(index: number): {
    readonly subRegions: readonly IoFdSubRegion[];
    readonly fds: readonly number[];
  };
  /** DEVICE_FEATURE; absent means no features (ENOTTY, as VFIO). */
  feature?(flags: number, data: Uint8Array, argsz: number): FeatureResult;
  /** MIG_DATA_READ: up to `size` bytes of migration data (fewer: end of data). */
  migrationRead?(size: number): Uint8Array;
  /** MIG_DATA_WRITE. */
  migrationWrite?(data: Uint8Array): void;
  /** Fds the device holds for its client (eventfds, DMA windows), for the server's per-client fd quota. */
  heldFdCount?(): number;
  /** A client finished VERSION negotiation (as the device's owner; observers are not attached). */
  attach?(session: DeviceSession): void;
  /** That client went away: drop its DMA mappings and interrupt fds, keep device state. */
  detach?(session: DeviceSession): void;
}
