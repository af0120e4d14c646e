/**
 * The vfio-user MPT backend: guest memory is what the VMM mapped with DMA_MAP;
 * interrupts are the eventfds it wired with SET_IRQS.
 *
 * Two memory models, one mediator: when the VMM shared guest RAM by fd (KVM
 * style) a page is a direct view of the mapping; when it did not (Xen style,
 * QEMU without `share=on`: the device model has no standing mapping) a page is
 * staged — fetched with pipelined DMA_READs into a copy of ours, as a Xen
 * device model maps foreign frames around each use — and what the engine wrote
 * into the copy goes back with DMA_WRITE, byte-exact: bytes it did not write
 * are never sent, so a guest that changes its other bytes meanwhile loses nothing.
 */
import { MgpuError } from "../base/index.js";
import type { PciDevice } from "../pci/index.js";
/** One contiguous piece of a scatter-gather DMA (the PCI toolkit's DmaSpace takes lists of them). */
interface DmaPiece {
  readonly address: bigint;
  readonly bytes: Uint8Array;
}
import type { Mpt, MptHooks, PageSet, StagingDone } from "./mpt.js";

const PAGE = 4096;
/** Most pages one vGPU may hold staged at once (64 MiB): a submission touching more fails with DMA_ERROR. */
export const MAX_STAGED_PAGES = 16384;

export class StagingError extends MgpuError<"E2BIG" | "ECANCELED" | "EDMA"> {}

/** Staged pages that are contiguous in guest memory: one buffer, one piece on the wire. */
class StagedRun {
  readonly bytes: Uint8Array;
  /** One bit per byte the engine wrote (run set only). */
  readonly written: Uint32Array;
  constructor(
    readonly gpa: bigint,
    readonly pages: number,
  ) {
    this.bytes = new Uint8Array(pages * PAGE);
    this.written = new Uint32Array((pages * PAGE) >>> 5);
  }
}

interface StagedPage {
  readonly run: StagedRun;
  readonly index: number;
  readonly bytes: Uint8Array;
}

/** Marks bits [from, to) of `bits`. */
function markBits(bits: Uint32Array, from: number, to: number): void {
  while (from < to && from & 31) {
    bits[from >>> 5]! |= 1 << (from & 31);
    from++;
  }
  if (to - from >= 32) {
    bits.fill(0xffffffff, from >>> 5, to >>> 5);
    from = to & ~31;
  }
  while (from < to) {
    bits[from >>> 5]! |= 1 << (from & 31);
    from++;
  }
}

/** Calls `each(start, end)` for every maximal run of set bits. */
function bitRuns(bits: Uint32Array, each: (start: number, end: number) => void): void {
  let start = -1;
  for (let w = 0; w < bits.length; w++) {
    const word = bits[w]!;
    if (word === 0 || word === 0xffffffff) {
      const set = word !== 0;
      if (set && start < 0) start = w << 5;
      else if (!set && start >= 0) {
        each(start, w << 5);
        start = -1;
      }
      continue;
    }
    for (let b = 0; b < 32; b++) {
      const set = (word >>> b) & 1;
      if (set && start < 0) start = (w << 5) | b;
      else if (!set && start >= 0) {
        each(start, (w << 5) | b);
        start = -1;
      }
    }
  }
  if (start >= 0) each(start, bits.length << 5);
}

/** Sorted, de-duplicated page addresses grouped into contiguous runs. */
function contiguousRuns(gpas: readonly bigint[]): { gpa: bigint; pages: number }[] {
  const sorted = [...new Set(gpas)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const runs: { gpa: bigint; pages: number }[] = [];
  for (const gpa of sorted) {
    const last = runs.at(-1);
    if (last && last.gpa + BigInt(last.pages * PAGE) === gpa) last.pages++;
    else runs.push({ gpa, pages: 1 });
  }
  return runs;
}

export class VfioUserMpt implements Mpt {
  private current: PageSet = "run";
  private readonly sets: Record<PageSet, Map<bigint, StagedPage>> = { scan: new Map(), run: new Map() };
  /** Bumped by release(): batches begun before it install nothing. */
  private epoch = 0;
  /** Pages fetched from the guest so far (for tests and stats). */
  maps = 0;
  /** Bytes written back so far. */
  writtenBack = 0;

  constructor(
    private readonly device: PciDevice,
    private readonly hooks?: MptHooks,
  ) {
    // Pages of windows the VMM unmapped stay revoked (zeros) until the end of a
    // workload; then the mediator drops its cached views and they are unmapped.
    device.dma.beforeReleaseStale = () => hooks?.forgetGuestPages();
  }

  get phase(): PageSet {
    return this.current;
  }

  set phase(set: PageSet) {
    if (set === this.current) return;
    this.current = set;
    // A translation cached in the other phase may point at the other set's copy.
    if (this.stagedPages > 0) this.hooks?.forgetGuestPages();
  }

  mapGuestPage(gpa: bigint): Uint8Array | undefined {
    const set = this.sets[this.current];
    if (set.size > 0) {
      const staged = set.get(gpa);
      if (staged) return staged.bytes;
    }
    if (!this.device.dma.isDirect(gpa)) return undefined; // message-based and not staged: a fault for now
    try {
      return this.device.dma.view(gpa, PAGE, true).bytes;
    } catch {
      return undefined; // not writable, or DMA not allowed: the GTT faults
    }
  }

  wrote(gpa: bigint, offset: number, length: number): void {
    const set = this.sets.run;
    if (set.size === 0) return;
    const staged = set.get(gpa);
    if (!staged) return;
    const at = staged.index * PAGE + offset;
    markBits(staged.run.written, at, at + length);
  }

  get stagesPages(): boolean {
    return this.device.dma.hasMessageWindows;
  }

  needsStaging(gpa: bigint): boolean {
    return this.device.dma.isMessageBased(gpa);
  }

  isStaged(set: PageSet, gpa: bigint): boolean {
    return this.sets[set].has(gpa);
  }

  get stagedPages(): number {
    return this.sets.scan.size + this.sets.run.size;
  }

  stage(
    set: PageSet,
    fetch: readonly bigint[],
    blank: readonly bigint[],
    timeoutMs: number,
    done: StagingDone,
  ): void {
    const pages = this.sets[set];
    const wanted = fetch.filter((g) => !pages.has(g));
    const fresh = blank.filter((g) => !pages.has(g) && !fetch.includes(g));
    if (wanted.length === 0 && fresh.length === 0) return done();
    if (this.stagedPages + wanted.length + fresh.length > MAX_STAGED_PAGES)
      return done(
        new StagingError(
          "E2BIG",
          `${wanted.length + fresh.length} more guest pages to stage; at most ${MAX_STAGED_PAGES} may be held`,
        ),
      );
    const fetched = contiguousRuns(wanted).map((r) => new StagedRun(r.gpa, r.pages));
    const blanks = contiguousRuns(fresh).map((r) => new StagedRun(r.gpa, r.pages));
    const epoch = this.epoch;
    const install = () => {
      for (const run of [...fetched, ...blanks])
        for (let i = 0; i < run.pages; i++) {
          const gpa = run.gpa + BigInt(i * PAGE);
          pages.set(gpa, { run, index: i, bytes: run.bytes.subarray(i * PAGE, (i + 1) * PAGE) });
        }
      // Cached translations may still point at an earlier copy of these pages.
      this.hooks?.forgetGuestPages();
    };
    if (fetched.length === 0) {
      install();
      return done();
    }
    const pieces: DmaPiece[] = fetched.map((r) => ({ address: r.gpa, bytes: r.bytes }));
    try {
      this.device.dma.readPiecesAsync(
        pieces,
        (error) => {
          if (epoch !== this.epoch) return done(new StagingError("ECANCELED", "staging was cancelled"));
          if (error) return done(error);
          this.maps += wanted.length;
          install();
          done();
        },
        timeoutMs,
      );
    } catch (e) {
      done(e instanceof MgpuError ? e : new StagingError("EDMA", String(e)));
    }
  }

  drop(set: PageSet): void {
    if (this.sets[set].size === 0) return;
    this.sets[set].clear();
    this.hooks?.forgetGuestPages();
  }

  writeBack(timeoutMs: number, done: StagingDone): void {
    const runs = new Set<StagedRun>();
    for (const p of this.sets.run.values()) runs.add(p.run);
    const pieces: DmaPiece[] = [];
    let bytes = 0;
    for (const run of runs)
      bitRuns(run.written, (start, end) => {
        pieces.push({ address: run.gpa + BigInt(start), bytes: run.bytes.subarray(start, end) });
        bytes += end - start;
      });
    // The copies are no longer the engine's: a later submission stages afresh.
    this.drop("run");
    if (pieces.length === 0) return done();
    const epoch = this.epoch;
    try {
      this.device.dma.writePiecesAsync(
        pieces,
        (error) => {
          if (epoch !== this.epoch) return done(new StagingError("ECANCELED", "write-back was cancelled"));
          if (!error) this.writtenBack += bytes;
          done(error);
        },
        timeoutMs,
      );
    } catch (e) {
      done(e instanceof MgpuError ? e : new StagingError("EDMA", String(e)));
    }
  }

  release(): void {
    this.drop("run");
    // A workload just ended: no view of a guest page is in use.
    this.device.dma.releaseStale();
  }

  cancel(): void {
    this.epoch++;
    this.sets.scan.clear();
    this.sets.run.clear();
    this.current = "run";
    this.hooks?.forgetGuestPages();
    this.device.dma.releaseStale();
  }

  injectInterrupt(vector: number): void {
    this.device.irqs.notify(vector);
  }
}
