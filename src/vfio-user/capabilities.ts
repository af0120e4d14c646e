/**
 * The VERSION handshake's capabilities JSON: parsing with validation, the
 * defaults the spec gives for absent fields, and the server's choice of reply.
 */
import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DEFAULT_MAX_MSG_FDS,
  DEFAULT_PGSIZES,
} from "./constants.js";
import { invalid } from "./errors.js";

export interface Capabilities {
  /** Most fds the sender can receive in one message. */
  readonly maxMsgFds: number;
  /** Most data the sender accepts in one read/write message. */
  readonly maxDataXferSize: number;
  readonly maxDmaMaps: number;
  /** Page sizes supported for DMA, or'ed. */
  readonly pgsizes: number;
  readonly writeMultiple: boolean;
  readonly twinSocket: { readonly supported: boolean; readonly fdIndex?: number };
  /** The legacy migration object (pgsize, max_bitmap_size) some clients still send. */
  readonly migration?: { readonly pgsize: number; readonly maxBitmapSize: number };
}

export const defaultCapabilities: Capabilities = {
  maxMsgFds: DEFAULT_MAX_MSG_FDS,
  maxDataXferSize: DEFAULT_MAX_DATA_XFER_SIZE,
  maxDmaMaps: DEFAULT_MAX_DMA_MAPS,
  pgsizes: DEFAULT_PGSIZES,
  writeMultiple: false,
  twinSocket: { supported: false },
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function positiveInt(obj: Record<string, unknown>, key: string, fallback: number, max: number): number {
  const v = obj[key];
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > max)
    throw invalid(`capability ${key} must be an integer in 0..${max}`);
  return v;
}

/** Parses version data; absent JSON or absent fields take the spec's defaults. */
export function parseCapabilities(json: string | undefined): Capabilities {
  if (json === undefined || json.length === 0) return defaultCapabilities;
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch {
    throw invalid("version data is not valid JSON");
  }
  if (!isObject(doc)) throw invalid("version data must be a JSON object");
  const caps = doc.capabilities;
  if (caps === undefined) return defaultCapabilities;
  if (!isObject(caps)) throw invalid("capabilities must be an object");
  const writeMultiple = caps.write_multiple ?? false;
  if (typeof writeMultiple !== "boolean") throw invalid("write_multiple must be a boolean");
  let twinSocket: Capabilities["twinSocket"] = { supported: false };
  if (caps.twin_socket !== undefined) {
    if (!isObject(caps.twin_socket)) throw invalid("twin_socket must be an object");
    const supported = caps.twin_socket.supported ?? false;
    if (typeof supported !== "boolean") throw invalid("twin_socket.supported must be a boolean");
    const fdIndex = caps.twin_socket.fd_index;
    if (fdIndex !== undefined && (typeof fdIndex !== "number" || !Number.isInteger(fdIndex) || fdIndex < 0))
      throw invalid("twin_socket.fd_index must be a non-negative integer");
    twinSocket = fdIndex === undefined ? { supported } : { supported, fdIndex };
  }
  let migration: Capabilities["migration"];
  if (caps.migration !== undefined) {
    if (!isObject(caps.migration)) throw invalid("migration must be an object");
    const pgsize = positiveInt(caps.migration, "pgsize", 4096, Number.MAX_SAFE_INTEGER);
    // As libvfio-user: the dirty-page granule is a power of two, at least one host page.
    if (pgsize < 4096 || !Number.isInteger(Math.log2(pgsize)))
      throw invalid(`migration.pgsize ${pgsize} is not a power of two of at least 4096`);
    migration = {
      pgsize,
      maxBitmapSize: positiveInt(caps.migration, "max_bitmap_size", 0, Number.MAX_SAFE_INTEGER),
    };
  }
  const maxMsgFds = positiveInt(caps, "max_msg_fds", DEFAULT_MAX_MSG_FDS, 253);
  const maxDataXferSize = positiveInt(caps, "max_data_xfer_size", DEFAULT_MAX_DATA_XFER_SIZE, 0xffffffff);
  if (maxDataXferSize === 0) throw invalid("max_data_xfer_size must be positive");
  return {
    maxMsgFds,
    maxDataXferSize,
    maxDmaMaps: positiveInt(caps, "max_dma_maps", DEFAULT_MAX_DMA_MAPS, 0xffffffff),
    pgsizes: positiveInt(caps, "pgsizes", DEFAULT_PGSIZES, Number.MAX_SAFE_INTEGER),
    writeMultiple,
    twinSocket,
    ...(migration ? { migration } : {}),
  };
}

export function serializeCapabilities(c: Capabilities): string {
  const caps: Record<string, unknown> = {
    max_msg_fds: c.maxMsgFds,
    max_data_xfer_size: c.maxDataXferSize,
    max_dma_maps: c.maxDmaMaps,
    pgsizes: c.pgsizes,
  };
  if (c.writeMultiple) caps.write_multiple = true;
  if (c.twinSocket.supported)
    caps.twin_socket = {
      supported: true,
      ...(c.twinSocket.fdIndex !== undefined ? { fd_index: c.twinSocket.fdIndex } : {}),
    };
  if (c.migration)
    caps.migration = { pgsize: c.migration.pgsize, max_bitmap_size: c.migration.maxBitmapSize };
  return JSON.stringify({ capabilities: caps });
}
