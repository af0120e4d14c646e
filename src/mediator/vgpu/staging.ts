/**
 * Which guest pages a piece of work needs staged: graphics addresses are
 * translated through the parent's GTT (the vGPU's partition of it, already
 * validated by the GTT shadow), and the system pages among them that the VMM
 * serves only by messages are the ones to fetch — or, if the engine only
 * writes them, to start blank (only what it writes goes back).
 */
import { GTT_SYSTEM, GTT_VALID, PAGE_SHIFT, PAGE_SIZE } from "../../abi/index.js";
import type { Gtt } from "../../gpu/index.js";
import type { Mpt } from "../../hypervisor/mpt.js";
import type { Footprint, Partition } from "../scanner.js";

/** The guest frame a GMA page maps to, if it is a system page (the owner tag above bit 48 removed). */
export function systemFrame(gtt: Gtt, gmaPage: number): bigint | undefined {
  if (gmaPage < 0 || gmaPage >= gtt.entries) return undefined;
  const lo = gtt.lo[gmaPage]!;
  if ((lo & (GTT_VALID | GTT_SYSTEM)) !== (GTT_VALID | GTT_SYSTEM)) return undefined;
  const high = gtt.hi[gmaPage]! & 0xffff;
  return (BigInt(high) << 32n) | BigInt((lo & ~(PAGE_SIZE - 1)) >>> 0);
}

export interface PagesToStage {
  /** Read by the engine (perhaps written too): fetched from the guest. */
  readonly fetch: bigint[];
  /** Only written: start blank. */
  readonly blank: bigint[];
}

/** The message-served guest pages a submission's footprint reaches (the footprint lies in the partition). */
export function pagesOfFootprint(gtt: Gtt, mpt: Mpt, footprint: Footprint): PagesToStage {
  const read = new Set<bigint>();
  const written = new Set<bigint>();
  const r = footprint.ranges;
  for (let i = 0; i < r.length; i += 3) {
    const gma = r[i]!;
    const length = r[i + 1]!;
    const into = r[i + 2] ? written : read;
    const last = Math.floor((gma + length - 1) / PAGE_SIZE);
    for (let page = Math.floor(gma / PAGE_SIZE); page <= last; page++) {
      const gpa = systemFrame(gtt, page);
      if (gpa !== undefined && mpt.needsStaging(gpa)) into.add(gpa);
    }
  }
  const blank: bigint[] = [];
  for (const gpa of written) if (!read.has(gpa)) blank.push(gpa);
  return { fetch: [...read], blank };
}

/** Pages the scanner reads ahead when it misses one: the rest of a batch is usually right after. */
export const SCAN_READAHEAD_PAGES = 32;

/**
 * The message-served pages of [gma, gma + pages) that are not staged for the
 * scanner yet: what to fetch when the scanner missed the page at `gma`.
 */
export function scanPagesFrom(
  gtt: Gtt,
  mpt: Mpt,
  partition: Partition,
  gma: number,
  pages: number,
): bigint[] {
  const out: bigint[] = [];
  const first = gma >>> PAGE_SHIFT;
  const end = Math.min(first + pages, (partition.base + partition.size) >>> PAGE_SHIFT);
  for (let page = first; page < end; page++) {
    const gpa = systemFrame(gtt, page);
    if (gpa !== undefined && mpt.needsStaging(gpa) && !mpt.isStaged("scan", gpa)) out.push(gpa);
  }
  return out;
}
