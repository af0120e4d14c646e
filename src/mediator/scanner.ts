/**
 * The command scanner: every command a guest submits is parsed before the
 * shared engine sees it. Batch buffers are followed and flattened into one
 * shadow stream the guest cannot touch after the scan (no check-then-use race);
 * unknown or privileged commands, register writes outside the whitelist,
 * addresses outside the vGPU's graphics memory and runaway batch chains are
 * rejected with the address of the offending command.
 */
import {
  BB_SECOND_LEVEL,
  Blt,
  CLIENT_2D,
  CLIENT_MI,
  CommandCheck,
  Commands,
  type CommandSpec,
  MAX_COMMAND_DWORDS,
  QueueLimits,
  type ScanRejection,
  address64,
  bltPitch,
  checkCommand,
  client,
  commandLength,
  coordX,
  coordY,
  decodeCommand,
} from "../abi/index.js";
import { MgpuError } from "../base/index.js";
import { type GraphicsMemory, GttFault } from "../gpu/index.js";

export type { ScanRejection } from "../abi/index.js";

/** A submission refused: `reason` is the guest-visible verdict, `address` the offending command's GMA. */
export class ScanError extends MgpuError<"EREJECTED"> {
  constructor(
    readonly reason: ScanRejection,
    readonly address: number,
  ) {
    super("EREJECTED", `${reason} at 0x${address.toString(16)}`);
  }
}

export interface Partition {
  readonly base: number;
  readonly size: number;
}

export interface ScanLimits {
  /** Most commands in one submission (ring + batches). */
  readonly maxCommands: number;
  /** Most batch-buffer starts followed in one submission. */
  readonly maxBatchJumps: number;
  /** Most flattened bytes one submission may produce (what the daemon holds for it). */
  readonly maxBytes?: number;
}

export const defaultScanLimits: ScanLimits = {
  maxCommands: 1 << 16,
  maxBatchJumps: 256,
  maxBytes: QueueLimits.SUBMISSION_BYTES,
};

/**
 * The graphics memory a submission's commands reach, as (gma, length, written)
 * ranges: what must be made present before it runs when guest memory is staged.
 * A superset (whole rows of a blit's surfaces), merged as it is recorded.
 */
export class Footprint {
  /** Triples: gma, length, 1 if the engine writes through it. */
  readonly ranges: number[] = [];

  add(gma: number, length: number, written: boolean): void {
    if (length <= 0) return;
    const r = this.ranges;
    const n = r.length;
    const w = written ? 1 : 0;
    // The same surface again (the common case): extend the last range instead of adding one.
    if (n > 0 && r[n - 1] === w && gma <= r[n - 3]! + r[n - 2]! && gma + length >= r[n - 3]!) {
      const start = Math.min(gma, r[n - 3]!);
      r[n - 2] = Math.max(gma + length, r[n - 3]! + r[n - 2]!) - start;
      r[n - 3] = start;
      return;
    }
    r.push(gma, length, w);
  }
}

export interface ScanResult {
  /** The flattened, checked commands (no batch starts or ends): a copy the guest cannot reach. */
  readonly commands: Uint32Array;
  /** What its commands reach, if the scanner was asked to record it (`Scanner.recordFootprint`). */
  readonly footprint: Footprint | undefined;
  readonly count: number;
  readonly bytesScanned: number;
  /**
   * Ring offset the submission ends at: the tail asked for, or an earlier
   * command boundary in the ring when going on would pass a limit (the rest
   * is the next submission's).
   */
  readonly tail: number;
}

/**
 * One submission being scanned, resumable: `step(budget)` scans about
 * `budget` bytes of commands and returns the result once the tail is reached,
 * so a long submission is scanned across several loop rounds while other
 * tenants' traps are served in between. Each command is checked on the copy
 * that will run, so nothing the guest changes between steps can slip through.
 */
/** Flatten buffers a scanner keeps for reuse: one being filled while the last one drains. */
const SPARE_BUFFERS = 2;

export class ScanJob {
  /** Where the flattened commands go: grown by doubling (up to the limit), handed over without a copy. */
  private out: Uint32Array;
  private n = 0;
  private count = 0;
  private bytes = 0;
  private jumps = 0;
  private level = 0;
  private pc = 0;
  private returnPc = 0;
  private pos: number;
  /** The state at the last ring-level command boundary: where to end if a limit is passed after it. */
  private mark = { pos: 0, n: 0, count: 0, bytes: 0, jumps: 0 };
  /** Recorded as commands are checked (when the scanner records footprints). */
  readonly footprint: Footprint | undefined;

  constructor(
    private readonly scanner: Scanner,
    readonly start: number,
    readonly size: number,
    head: number,
    readonly tail: number,
  ) {
    this.pos = head;
    this.mark.pos = head;
    this.out = scanner.takeBuffer();
    this.footprint = scanner.recordFootprint ? new Footprint() : undefined;
  }

  /** Where the scan reads next: in the ring (ring offset) or in a batch (a GMA). */
  get position(): { inBatch: boolean; at: number } {
    return { inBatch: this.level > 0, at: this.level > 0 ? this.pc : this.pos };
  }

  get bytesScanned(): number {
    return this.bytes;
  }

  /** Scans until the tail or until `budget` more bytes were read; the result when done. Throws ScanError. */
  step(budget = Infinity): ScanResult | undefined {
    const { scanner, start, size, tail } = this;
    const memory = scanner.memory;
    const limits = scanner.limits;
    const maxCommands = limits.maxCommands;
    const maxBatchJumps = limits.maxBatchJumps;
    const maxWords = (limits.maxBytes ?? Infinity) / 4;
    const cmd = scanner.cmd;
    // The hot loop works on locals; the job's fields are read once here and written back
    // in `finally`, so a step that returns, or throws, leaves the same state as before.
    let out = this.out;
    let n = this.n;
    let count = this.count;
    let bytes = this.bytes;
    let jumps = this.jumps;
    let level = this.level;
    let pc = this.pc;
    let returnPc = this.returnPc;
    let pos = this.pos;
    const mark = this.mark;
    let markPos = mark.pos;
    let markN = mark.n;
    let markCount = mark.count;
    let markBytes = mark.bytes;
    let markJumps = mark.jumps;
    const stop = bytes + budget;
    let overAt = -1;
    // The ring itself must be the vGPU's (checked here, not when the job is made: step() is what throws).
    if (count === 0) scanner.checkRange(start, size, start);
    try {
      while (level > 0 || pos !== tail) {
        if (bytes >= stop) return undefined;
        const fromRing = level === 0;
        if (fromRing) {
          markPos = pos;
          markN = n;
          markCount = count;
          markBytes = bytes;
          markJumps = jumps;
        }
        const address = fromRing ? start + pos : pc;
        if (!fromRing) scanner.checkRange(pc, 4, pc);
        const dw0 = memory.read32(address);
        const spec = decodeCommand(dw0);
        if (spec === undefined) throw new ScanError(scanner.unknownKind(dw0), address);
        const len = commandLength(spec, dw0);
        if (len > cmd.length) throw new ScanError("malformed-command", address);
        if (fromRing) {
          const available = (tail - pos + size) % size;
          if (len * 4 > available) throw new ScanError("malformed-command", address);
        } else scanner.checkRange(pc, len * 4, pc);
        cmd[0] = dw0;
        if (fromRing) {
          for (let i = 1; i < len; i++) cmd[i] = memory.read32(start + ((pos + i * 4) % size));
          pos = (pos + len * 4) % size;
        } else {
          for (let i = 1; i < len; i++) cmd[i] = memory.read32(pc + i * 4);
          pc += len * 4;
        }
        if (++count > maxCommands) {
          overAt = address;
          break;
        }
        bytes += len * 4;
        scanner.check(spec, len, address, this.footprint);

        if (spec === Commands.BATCH_BUFFER_START) {
          const target = address64(cmd[1]!, cmd[2]!);
          scanner.checkRange(target, 4, address);
          if (++jumps > maxBatchJumps) {
            overAt = address;
            break;
          }
          const nested = (dw0 & BB_SECOND_LEVEL) !== 0;
          if (level === 0) level = 1;
          else if (nested) {
            if (level === 2) throw new ScanError("batch-nesting", address);
            returnPc = pc;
            level = 2;
          }
          pc = target;
          continue;
        }
        if (spec === Commands.BATCH_BUFFER_END) {
          if (level === 2) {
            level = 1;
            pc = returnPc;
          } else if (level === 1) level = 0;
          continue;
        }
        if (n + len > maxWords) {
          overAt = address;
          break;
        }
        if (n + len > out.length) {
          const grown = new Uint32Array(Math.min(out.length * 2 + len, Math.ceil(maxWords)));
          grown.set(out.subarray(0, n));
          out = grown;
        }
        if (len === 1) out[n] = dw0;
        else out.set(cmd.subarray(0, len), n);
        n += len;
      }
      if (overAt >= 0) {
        // A limit was passed: if ring commands before this one fit, the submission ends
        // after them (the rest is scanned again as the next one); if this one alone
        // passes it, the stream is refused.
        if (markCount === 0) throw new ScanError("runaway-batch", overAt);
        n = markN;
        count = markCount;
        bytes = markBytes;
        jumps = markJumps;
        level = 0;
        // (The footprint may hold the ranges of the commands left for the next one: a superset is fine.)
        return {
          commands: out.subarray(0, n),
          footprint: this.footprint,
          count,
          bytesScanned: bytes,
          tail: markPos,
        };
      }
    } catch (e) {
      if (e instanceof GttFault) throw new ScanError("gtt-fault", e.gma);
      throw e;
    } finally {
      this.out = out;
      this.n = n;
      this.count = count;
      this.bytes = bytes;
      this.jumps = jumps;
      this.level = level;
      this.pc = pc;
      this.returnPc = returnPc;
      this.pos = pos;
      mark.pos = markPos;
      mark.n = markN;
      mark.count = markCount;
      mark.bytes = markBytes;
      mark.jumps = markJumps;
    }
    return { commands: out.subarray(0, n), footprint: this.footprint, count, bytesScanned: bytes, tail };
  }
}

export class Scanner {
  readonly cmd = new Uint32Array(MAX_COMMAND_DWORDS);
  /**
   * Flatten buffers of completed submissions, taken again by the next scans. Without
   * them a flood of large submissions allocates (and doubles its way up to) a new
   * buffer per submission, and the daemon's memory grows until the collector runs.
   */
  private readonly spare: Uint32Array[] = [];
  /** Record each submission's footprint (its vGPU's guest memory is staged). */
  recordFootprint = false;

  takeBuffer(): Uint32Array {
    return this.spare.pop() ?? new Uint32Array(4096);
  }

  /** A completed submission's commands: its buffer may be reused (two are kept at most). */
  recycle(commands: Uint32Array): void {
    if (this.spare.length < SPARE_BUFFERS) this.spare.push(new Uint32Array(commands.buffer));
  }

  constructor(
    readonly memory: GraphicsMemory,
    private readonly partition: Partition,
    readonly limits: ScanLimits = defaultScanLimits,
  ) {}

  /** Starts scanning the ring from head to tail (byte offsets in a ring of `size` bytes at `start`). */
  begin(start: number, size: number, head: number, tail: number): ScanJob {
    return new ScanJob(this, start, size, head, tail);
  }

  /** Scans the ring from head to tail in one go. */
  scanRing(start: number, size: number, head: number, tail: number): ScanResult {
    return this.begin(start, size, head, tail).step()!;
  }

  unknownKind(dw0: number): ScanRejection {
    // Known-looking MI or 2D opcodes we do not allow are privileged; anything else is unknown.
    return client(dw0) === CLIENT_MI || client(dw0) === CLIENT_2D ? "privileged-command" : "unknown-command";
  }

  checkRange(address: number, length: number, at: number): void {
    const p = this.partition;
    if (address < p.base || address + length > p.base + p.size || length < 0)
      throw new ScanError("address-outside-partition", at);
  }

  /** The command table's rules, then every graphics address the command carries must be the vGPU's. */
  check(spec: CommandSpec, len: number, address: number, footprint?: Footprint): void {
    if (spec.privileged) throw new ScanError("privileged-command", address);
    const verdict = checkCommand(spec, this.cmd, len);
    if (verdict === CommandCheck.BAD_REGISTER) throw new ScanError("register-not-allowed", address);
    if (verdict !== CommandCheck.OK) throw new ScanError("malformed-command", address);
    const operands = spec.addresses;
    if (operands.length === 0) return;
    const c = this.cmd;
    // Blits clip to the surfaces' left/top edges and pitch: one empty after that touches nothing.
    let height = 0;
    if (operands[0]!.kind === "surface") {
      const topLeft = c[Blt.DST_TOP_LEFT]!;
      const bottomRight = c[Blt.DST_BOTTOM_RIGHT]!;
      if (coordY(bottomRight) <= Math.max(0, coordY(topLeft))) return;
      if (coordX(bottomRight) <= Math.max(0, coordX(topLeft))) return;
      height = coordY(bottomRight) - coordY(topLeft);
    }
    for (let i = 0; i < operands.length; i++) {
      const operand = operands[i]!;
      const at = address64(c[operand.dword]!, c[operand.dword + 1]!);
      if (operand.kind === "surface") {
        const y = coordY(c[operand.originDword]!);
        const pitch = bltPitch(c[operand.pitchDword]!);
        const y1 = Math.max(0, y);
        this.checkRows(at, pitch, y1, y + height, address);
        footprint?.add(at + y1 * pitch, (y + height - y1) * pitch, operand.written);
      } else if (operand.kind === "data") {
        if (operand.when === 0 || c[0]! & operand.when) {
          this.checkRange(at - (at % operand.align), (len - 3) * 4, address);
          footprint?.add(at - (at % operand.align), (len - 3) * 4, operand.written);
        }
      } // "batch": followed (and checked) by the scan loop
    }
  }

  /** Whole rows [y1, y2) of a surface must lie in the partition (blits clip only horizontally). */
  private checkRows(base: number, pitch: number, y1: number, y2: number, address: number): void {
    if (y2 <= y1) return;
    this.checkRange(base + y1 * pitch, (y2 - y1) * pitch, address);
  }
}
