/**
 * A vGPU's virtual engine: ring registers where the parent's are, so a driver
 * for one drives the other. A tail write notes the new tail and scans at most
 * TRAP_SCAN_BYTES of it; the scheduler's loop scans the rest (batches followed
 * and flattened) into a submission in bounded steps (`scanStep`), so the trap
 * path stays short. What a vGPU may hold is bounded (`QueueLimits`): past it ENGINE_STATUS
 * shows QUEUE_FULL and further tail moves merge into the last waiting one. A
 * rejected stream stops the virtual engine with the verdict in ENGINE_ERROR
 * until the guest resets it; an engine reset or FLR drops every piece of its
 * work first. The GPRs are the engine context the scheduler loads and saves.
 *
 * Guest memory the VMM serves only by messages is staged, never waited for: a
 * scan that reaches such a page parks (`scanWaiting`) while one batch of DMA
 * reads fetches it and the pages after it, and goes on when they are in; the
 * scheduler does the same for a submission's footprint before it runs and for
 * the write-back after it (`waiting`). Everyone else is served meanwhile.
 */
import {
  Bar2,
  ENGINE_RESET_BIT,
  EngineError,
  EngineStatus,
  GPR_COUNT,
  Irq,
  PAGE_SIZE,
  QueueLimits,
  RING_OFFSET_MASK,
  RingCtl,
  ScanRejectionCode,
} from "../../abi/index.js";
import type { MgpuError, RateLimitedLog } from "../../base/index.js";
import type { Mpt } from "../../hypervisor/mpt.js";
import { RegisterFile } from "../../pci/index.js";
import { type Footprint, ScanError, type ScanJob, type Scanner } from "../scanner.js";
import { SCAN_READAHEAD_PAGES, scanPagesFrom, systemFrame } from "./staging.js";
import type { VirtualIrq } from "./irq.js";
import type { VgpuStats } from "./stats.js";
import type { Vgpu } from "./vgpu.js";

/** Scanned commands waiting for the parent's engine. */
export interface Submission {
  readonly vgpu: Vgpu;
  /** The flattened, checked commands (a copy the guest cannot reach). */
  readonly commands: Uint32Array;
  /** Ring tail this submission completes up to. */
  readonly tail: number;
  /** What its commands reach (recorded when the vGPU's guest memory is staged). */
  readonly footprint: Footprint | undefined;
  /** Its footprint is staged (or needs nothing): it may go on the engine. */
  staged: boolean;
  /** Time it waited for guest memory (ms): the watchdog counts it with its engine time. */
  dmaMs: number;
}

/** Bytes of commands a tail write may scan on the trap path before the rest waits for the loop. */
const TRAP_SCAN_BYTES = 64 << 10;

/** Who runs a vGPU's work: told when that work must stop (engine reset, FLR, removal). */
export interface WorkOwner {
  drop(v: Vgpu): void;
  /** Engine time one submission may have (ms); waiting for guest memory counts against it. */
  readonly watchdogMs: number;
}

export class VirtualEngine {
  /** Ring, status, error, reset and GPR registers, relative to `Bar2Block.ENGINE`. */
  readonly registers: RegisterFile;
  /** Saved general-purpose registers (the engine context). */
  readonly gpr = new Uint32Array(GPR_COUNT);
  readonly queue: Submission[] = [];
  /** Ring tail scanned so far (the head advances as submissions complete). */
  private scannedTail = 0;
  private busy = false;
  /** The scheduler, once the vGPU is added to it. */
  scheduler: WorkOwner | undefined;
  /** The submission being scanned (in bounded steps, from the scheduler's loop). */
  private scan: ScanJob | undefined;
  /** Tails written and not yet scanned: one submission each, as the guest made them. */
  private readonly tails: number[] = [];
  /** Flattened bytes accepted and not yet completed (queued, running or preempted). */
  private acceptedBytes = 0;
  /** The scan waits for guest pages it reached (staged for it by one DMA batch). */
  private scanWaiting = false;
  /** Set by the scheduler while our next submission's pages, or the last one's write-back, are on the wire. */
  waiting = false;
  /** Bumped whenever our work is dropped: a DMA batch begun before it finds it changed and does nothing. */
  epoch = 0;

  constructor(
    size: number,
    private readonly owner: Vgpu,
    private readonly scanner: Scanner,
    private readonly irq: VirtualIrq,
    private readonly stats: VgpuStats,
    private readonly log: RateLimitedLog,
  ) {
    const at = (register: number) => register - Bar2.ENGINE;
    this.registers = new RegisterFile(
      size,
      [
        { offset: at(Bar2.RING_START), name: "RING_START", writable: ~(PAGE_SIZE - 1) },
        { offset: at(Bar2.RING_HEAD), name: "RING_HEAD", writable: 0 },
        {
          offset: at(Bar2.RING_TAIL),
          name: "RING_TAIL",
          writable: RING_OFFSET_MASK,
          write: () => this.tailWritten(),
        },
        { offset: at(Bar2.RING_CTL), name: "RING_CTL", write: () => this.ringControlWritten() },
        { offset: at(Bar2.ENGINE_STATUS), name: "ENGINE_STATUS", writable: 0, read: () => this.status() },
        { offset: at(Bar2.ENGINE_ERROR), name: "ENGINE_ERROR", writable: 0 },
        { offset: at(Bar2.ENGINE_ERROR_ADDR), name: "ENGINE_ERROR_ADDR", writable: 0 },
        {
          offset: at(Bar2.ENGINE_RESET),
          name: "ENGINE_RESET",
          write: (v) => v & ENGINE_RESET_BIT && this.engineReset(),
        },
        ...Array.from({ length: GPR_COUNT }, (_, n) => ({
          offset: at(Bar2.GPR0) + n * 4,
          name: `GPR${n}`,
          read: () => this.gpr[n]!,
          write: (v: number) => void (this.gpr[n] = v),
        })),
      ],
      (offset, write) =>
        log.warn({ vgpu: owner.uuid, offset: offset + Bar2.ENGINE, write }, "unknown vGPU register"),
    );
  }

  get error(): number {
    return this.registers.get("ENGINE_ERROR");
  }

  get pending(): boolean {
    return this.queue.length > 0;
  }

  /** True if ring commands wait to be scanned (not for guest memory) and there is room to accept them. */
  get scanPending(): boolean {
    if (this.scanWaiting) return false;
    return this.scan !== undefined || (this.tails.length > 0 && this.hasRoom);
  }

  private get mpt(): Mpt | undefined {
    return this.owner.mpt;
  }

  private get hasRoom(): boolean {
    return this.queue.length < QueueLimits.SUBMISSIONS && this.acceptedBytes < QueueLimits.BYTES;
  }

  /** QUEUE_FULL: as many tail moves wait as may, or the waiting ones cannot be accepted yet. */
  private get queueFull(): boolean {
    return this.tails.length >= QueueLimits.SUBMISSIONS || (this.tails.length > 0 && !this.hasRoom);
  }

  /**
   * Scans about `budget` bytes of waiting ring commands (from the scheduler's
   * loop, never the trap path); returns the bytes scanned.
   */
  scanStep(budget: number): number {
    const r = this.registers;
    const mpt = this.mpt;
    const staging = mpt?.stagesPages === true;
    if (!this.scan) {
      if (!this.scanPending) return 0;
      const tail = this.tails.shift()!;
      // The guest wrote these commands after any page we staged before: read them afresh.
      if (staging) mpt.drop("scan");
      this.scanner.recordFootprint = staging;
      this.scan = this.scanner.begin(r.get("RING_START"), this.ringSize, this.scannedTail, tail);
    }
    const job = this.scan;
    const before = job.bytesScanned;
    if (mpt) mpt.phase = "scan";
    try {
      const result = job.step(budget);
      if (!result) return job.bytesScanned - before;
      this.scan = undefined;
      if (staging) mpt.drop("scan");
      this.stats.scanBytes += result.bytesScanned;
      this.stats.commands += result.count;
      this.stats.submissions++;
      this.scannedTail = result.tail;
      // Ended early at a limit: the rest of the ring up to the tail asked for is the next submission.
      if (result.tail !== job.tail) this.tails.unshift(job.tail);
      this.acceptedBytes += result.commands.byteLength;
      this.queue.push({
        vgpu: this.owner,
        commands: result.commands,
        tail: result.tail,
        footprint: result.footprint,
        staged: !staging,
        dmaMs: 0,
      });
      this.busy = true;
    } catch (e) {
      if (!(e instanceof ScanError)) throw e;
      // A page served by messages and not here yet: fetch it (and what follows), go on when it is in.
      if (e.reason === "gtt-fault" && mpt && this.fetchForScan(mpt, e.address))
        return job.bytesScanned - before;
      this.scan = undefined;
      this.stats.rejected++;
      mpt?.drop("scan");
      this.scannedTail = job.tail;
      this.log.warn(
        { vgpu: this.owner.uuid, reason: e.reason, address: `0x${e.address.toString(16)}` },
        "command stream rejected",
      );
      this.failed(EngineError.REJECTED | ScanRejectionCode[e.reason], e.address, false);
    } finally {
      if (mpt) mpt.phase = "run";
    }
    return job.bytesScanned - before;
  }

  /**
   * The scan faulted at `gma`: if that is a guest page the VMM serves by
   * messages, not staged yet, the scan parks while one batch fetches it and
   * the pages after it (true); otherwise it is a real fault (false).
   */
  private fetchForScan(mpt: Mpt, gma: number): boolean {
    const gtt = this.scanner.memory.gtt;
    const gpa = systemFrame(gtt, gma >>> 12);
    if (gpa === undefined || !mpt.needsStaging(gpa) || mpt.isStaged("scan", gpa)) return false;
    const pages = scanPagesFrom(gtt, mpt, this.owner.gm, gma, SCAN_READAHEAD_PAGES);
    const epoch = this.epoch;
    const t0 = performance.now();
    this.scanWaiting = true;
    this.stats.dmaBatches++;
    mpt.stage("scan", pages, [], this.scheduler?.watchdogMs ?? 500, (error) => {
      if (epoch !== this.epoch) return;
      this.scanWaiting = false;
      this.stats.dmaWaitMs += performance.now() - t0;
      if (error) this.dmaFailed(error);
    });
    return true;
  }

  /**
   * Guest memory could not be staged or written back: a timeout is a hang (the
   * watchdog counts the wait), anything else DMA_ERROR. Only this vGPU stops.
   */
  dmaFailed(error: MgpuError): void {
    if (error.code === "ECANCELED") return; // our work was dropped meanwhile
    const hang = error.code === "ETIMEDOUT";
    if (!hang) this.stats.dmaErrors++;
    this.log.warn(
      { vgpu: this.owner.uuid, code: error.code, err: error.message },
      hang ? "guest memory did not arrive within the watchdog" : "guest memory could not be staged",
    );
    this.scheduler?.drop(this.owner);
    this.mpt?.cancel();
    this.failed(EngineError.DMA_ERROR, 0, hang);
  }

  /** Stops all of our work: queued, being scanned, and on (or set aside for) the parent's engine. */
  dropWork(): void {
    this.scheduler?.drop(this.owner);
    this.clearWork();
    this.mpt?.cancel();
  }

  private clearWork(): void {
    this.queue.length = 0;
    this.acceptedBytes = 0;
    this.scan = undefined;
    this.tails.length = 0;
    this.busy = false;
    this.scanWaiting = false;
    this.waiting = false;
    this.epoch++;
  }

  /** The scheduler put a submission of ours on the parent's engine. */
  started(): void {
    this.busy = true;
  }

  /** The scheduler finished one of our submissions. */
  completed(s: Submission): void {
    this.acceptedBytes -= s.commands.byteLength;
    this.scanner.recycle(s.commands);
    this.registers.set("RING_HEAD", s.tail);
    if (this.queue.length === 0) this.busy = false;
    this.irq.raise(Irq.IDLE);
  }

  /** The engine stopped on our submission (fault) or it ran past its budget (hang). */
  failed(code: number, address: number, hang: boolean): void {
    this.clearWork();
    this.registers.set("ENGINE_ERROR", hang ? EngineError.HANG : code);
    this.registers.set("ENGINE_ERROR_ADDR", address);
    this.registers.set("RING_HEAD", this.scannedTail);
    if (hang) this.stats.hangs++;
    this.irq.raise(Irq.ENGINE_ERROR | (code === EngineError.GTT_FAULT ? Irq.GTT_FAULT : 0));
  }

  /** Function reset: all work dropped first, then registers, queue and context back to power-on. */
  reset(): void {
    this.dropWork();
    this.registers.reset();
    this.scannedTail = 0;
    this.gpr.fill(0);
  }

  private get ringSize(): number {
    return RingCtl.lengthPages(this.registers.get("RING_CTL")) * PAGE_SIZE;
  }

  private ringControlWritten(): void {
    // Enabling a ring (re)starts it empty at head 0; a scan of the old ring is abandoned.
    this.scan = undefined;
    this.tails.length = 0;
    this.registers.set("RING_HEAD", 0);
    this.scannedTail = 0;
  }

  /** The trap path only notes the new tail: scanning happens in bounded steps from the scheduler's loop. */
  private tailWritten(): void {
    const r = this.registers;
    if (!(r.get("RING_CTL") & RingCtl.ENABLE)) return;
    if (r.get("ENGINE_ERROR") !== EngineError.NONE) return; // stopped until the guest resets the engine
    const tail = r.get("RING_TAIL") % this.ringSize;
    if (tail === (this.tails.at(-1) ?? this.scan?.tail ?? this.scannedTail)) return;
    if (this.queueFull) this.stats.backpressure++;
    if (this.tails.length < QueueLimits.SUBMISSIONS) this.tails.push(tail);
    else this.tails[this.tails.length - 1] = tail; // merged into the last (split again at the limits)
    // A small submission is scanned right here; a long one goes on from the loop. Not when guest
    // memory is served by messages: a trap is answered before any DMA for it goes out (QEMU waits
    // for this reply holding its big lock, and serves our DMA only once it has it).
    if (this.tails.length === 1 && !this.scan && this.hasRoom && this.mpt?.stagesPages !== true)
      this.scanStep(TRAP_SCAN_BYTES);
  }

  private status(): number {
    const error = this.registers.get("ENGINE_ERROR") !== EngineError.NONE;
    const waiting = this.tails.length > 0 || this.scan !== undefined || this.waiting;
    const idle = error || (!this.busy && !waiting && this.registers.get("RING_HEAD") === this.scannedTail);
    const full = !error && this.queueFull;
    return (
      (idle ? EngineStatus.IDLE : 0) | (error ? EngineStatus.ERROR : 0) | (full ? EngineStatus.QUEUE_FULL : 0)
    );
  }

  private engineReset(): void {
    const r = this.registers;
    this.dropWork(); // first: nothing queued or running before the reset may run after it
    r.set("ENGINE_ERROR", EngineError.NONE);
    r.set("ENGINE_ERROR_ADDR", 0);
    this.scannedTail = r.get("RING_TAIL") % this.ringSize;
    r.set("RING_HEAD", this.scannedTail);
    this.gpr.fill(0);
  }
}
