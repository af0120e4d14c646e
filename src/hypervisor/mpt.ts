/**
 * The mediated pass-through (MPT) interface: everything the mediator needs from
 * the hypervisor, and nothing more — reach guest memory, inject an interrupt.
 * One backend so far, vfio-user: a real VMM such as QEMU, and the project's own
 * simulated VMs (`src/vmm/`), which are vfio-user clients too.
 *
 * Two memory models. Guest RAM shared by fd (KVM style) is reached directly,
 * any page at any time. Guest RAM the VMM serves only by messages (Xen style,
 * or QEMU without `share=on`) is *staged*: before the engine or the scanner
 * touches such a page, the mediator asks for it (`stage`, one asynchronous
 * batch; the vGPU waits, everyone else goes on), and after the work the bytes
 * the engine wrote go back (`writeBack`) before the guest hears of completion.
 * Nothing here ever waits for the VMM.
 */
import type { MgpuError } from "../base/index.js";
import type { PciDevice } from "../pci/index.js";

/**
 * Staged pages come in two sets with their own lifetimes: the scanner's (a
 * submission's ring and batch pages, read once and dropped when its scan ends)
 * and the engine's (the pages its commands read and write, written back when
 * it completes). `Mpt.phase` says whose lookups `mapGuestPage` serves.
 */
export type PageSet = "scan" | "run";

/** Called on the serving loop when a staging or write-back batch ends. */
export type StagingDone = (error?: MgpuError) => void;

export interface Mpt {
  /** A view of one 4 KiB guest page (gpa page-aligned): direct, or the current set's staged copy; else undefined. */
  mapGuestPage(gpa: bigint): Uint8Array | undefined;
  /** The engine wrote [offset, offset+length) of the page at `gpa` (a staged copy records it for write-back). */
  wrote(gpa: bigint, offset: number, length: number): void;
  /** Raises the vGPU's interrupt (MSI vector, or INTx) in the guest. */
  injectInterrupt(vector: number): void;
  /**
   * A workload ended: the engine's staged copies are dropped unwritten, and
   * mappings the VMM unmapped meanwhile are released (no view of them is in use).
   */
  release(): void;
  /**
   * All staging stops (the vGPU's work was dropped: reset, FLR, removal): both
   * sets are dropped and batches still on the wire end with ECANCELED.
   */
  cancel(): void;

  // ---- staging (guest memory without a direct view) ----------------------

  /** Whose staged pages `mapGuestPage` returns ("run" unless the scanner is at work). */
  phase: PageSet;
  /** True if some guest memory has no direct view, so work must be staged. */
  readonly stagesPages: boolean;
  /** True if the page at `gpa` has no direct view (it must be staged before use). */
  needsStaging(gpa: bigint): boolean;
  /** True if `set` holds a copy of the page at `gpa`. */
  isStaged(set: PageSet, gpa: bigint): boolean;
  /** Pages staged in both sets now (what the bound applies to). */
  readonly stagedPages: number;
  /**
   * Stages pages into `set`, as one asynchronous batch: `fetch` pages are read
   * from the guest, `blank` pages (the engine only writes them) start as zeros
   * and are not read. Pages already staged in `set` are skipped. `done` runs
   * on the loop (at once if there is nothing to fetch); a copy becomes visible
   * only when its whole batch is in. `timeoutMs` bounds the wait.
   */
  stage(
    set: PageSet,
    fetch: readonly bigint[],
    blank: readonly bigint[],
    timeoutMs: number,
    done: StagingDone,
  ): void;
  /** Drops one set's copies unwritten (the scanner's, when a scan ends or starts again). */
  drop(set: PageSet): void;
  /**
   * Writes back exactly the bytes the engine wrote into the "run" set's
   * copies (as few messages as contiguous runs allow), then drops the set;
   * `done` when the VMM has taken them all.
   */
  writeBack(timeoutMs: number, done: StagingDone): void;
}

/** What a backend may ask of the mediator. */
export interface MptHooks {
  /**
   * Drop every cached view of guest pages: the backend is about to unmap or
   * drop pages it handed out with mapGuestPage.
   */
  forgetGuestPages(): void;
}

/** Makes the MPT for one vGPU's PCI function. */
export type MptFactory = (device: PciDevice, hooks: MptHooks) => Mpt;
