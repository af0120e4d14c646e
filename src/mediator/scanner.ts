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
}

export const defaultScanLimits: ScanLimits = { maxCommands: 1 << 16, maxBatchJumps: 256 };

export interface ScanResult {
  /** The flattened, checked commands (no batch starts or ends): a copy the guest cannot reach. */
  readonly commands: Uint32Array;
  readonly count: number;
  readonly bytesScanned: number;
}

export class Scanner {
  private readonly cmd = new Uint32Array(MAX_COMMAND_DWORDS);

  constructor(
    private readonly memory: GraphicsMemory,
    private readonly partition: Partition,
    private readonly limits: ScanLimits = defaultScanLimits,
  ) {}

  /** Scans the ring from head to tail (byte offsets in a ring of `size` bytes at `start`). */
  scanRing(start: number, size: number, head: number, tail: number): ScanResult {
    this.checkRange(start, size, start);
    let out = new Uint32Array(1024);
    let n = 0;
    let count = 0;
    let bytes = 0;
    let jumps = 0;
    let level = 0;
    let pc = 0;
    let returnPc = 0;
    let pos = head;
    try {
      while (level > 0 || pos !== tail) {
        const fromRing = level === 0;
        const address = fromRing ? start + pos : pc;
        if (!fromRing) this.checkRange(pc, 4, pc);
        const dw0 = this.memory.read32(address);
        const spec = decodeCommand(dw0);
        if (spec === undefined) throw new ScanError(this.unknownKind(dw0), address);
        const len = commandLength(spec, dw0);
        if (len > this.cmd.length) throw new ScanError("malformed-command", address);
        if (fromRing) {
          const available = (tail - pos + size) % size;
          if (len * 4 > available) throw new ScanError("malformed-command", address);
        } else this.checkRange(pc, len * 4, pc);
        for (let i = 0; i < len; i++)
          this.cmd[i] = fromRing
            ? this.memory.read32(start + ((pos + i * 4) % size))
            : this.memory.read32(pc + i * 4);
        if (fromRing) pos = (pos + len * 4) % size;
        else pc += len * 4;
        if (++count > this.limits.maxCommands) throw new ScanError("runaway-batch", address);
        bytes += len * 4;
        this.check(spec, len, address);

        if (spec === Commands.BATCH_BUFFER_START) {
          const target = address64(this.cmd[1]!, this.cmd[2]!);
          this.checkRange(target, 4, address);
          if (++jumps > this.limits.maxBatchJumps) throw new ScanError("runaway-batch", address);
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
        if (n + len > out.length) {
          const grown = new Uint32Array(out.length * 2 + len);
          grown.set(out.subarray(0, n));
          out = grown;
        }
        if (len === 1) out[n] = dw0;
        else out.set(this.cmd.subarray(0, len), n);
        n += len;
      }
    } catch (e) {
      if (e instanceof GttFault) throw new ScanError("gtt-fault", e.gma);
      throw e;
    }
    return { commands: out.subarray(0, n), count, bytesScanned: bytes };
  }

  private unknownKind(dw0: number): ScanRejection {
    // Known-looking MI or 2D opcodes we do not allow are privileged; anything else is unknown.
    return client(dw0) === CLIENT_MI || client(dw0) === CLIENT_2D ? "privileged-command" : "unknown-command";
  }

  private checkRange(address: number, length: number, at: number): void {
    const p = this.partition;
    if (address < p.base || address + length > p.base + p.size || length < 0)
      throw new ScanError("address-outside-partition", at);
  }

  /** The command table's rules, then every graphics address the command carries must be the vGPU's. */
  private check(spec: CommandSpec, len: number, address: number): void {
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
        this.checkRows(at, bltPitch(c[operand.pitchDword]!), Math.max(0, y), y + height, address);
      } else if (operand.kind === "data") {
        if (operand.when === 0 || c[0]! & operand.when)
          this.checkRange(at - (at % operand.align), (len - 3) * 4, address);
      } // "batch": followed (and checked) by the scan loop
    }
  }

  /** Whole rows [y1, y2) of a surface must lie in the partition (blits clip only horizontally). */
  private checkRows(base: number, pitch: number, y1: number, y2: number, address: number): void {
    if (y2 <= y1) return;
    this.checkRange(base + y1 * pitch, (y2 - y1) * pitch, address);
  }
}
