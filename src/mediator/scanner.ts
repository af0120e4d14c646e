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
  BLT_DEPTH_32,
  BltOp,
  CLIENT_2D,
  CLIENT_MI,
  FLUSH_POST_SYNC_WRITE,
  GPR_COUNT,
  type GraphicsMemory,
  GttFault,
  MiOp,
  ROP_PATCOPY,
  ROP_SRCCOPY,
  Reg,
  bltOpcode,
  client,
  commandLength,
  miOpcode,
} from "../gpu/index.js";

export type ScanRejection =
  | "unknown-command"
  | "privileged-command"
  | "register-not-allowed"
  | "address-outside-partition"
  | "malformed-command"
  | "runaway-batch"
  | "batch-nesting"
  | "gtt-fault";

export class ScanError extends Error {
  constructor(
    readonly reason: ScanRejection,
    readonly address: number,
  ) {
    super(`${reason} at 0x${address.toString(16)}`);
    this.name = "ScanError";
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
  private readonly cmd = new Uint32Array(64);

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
        const len = commandLength(dw0);
        if (len === undefined) throw new ScanError(this.unknownKind(dw0), address);
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

        if (client(dw0) === CLIENT_MI && miOpcode(dw0) === MiOp.BATCH_BUFFER_START) {
          if (len !== 3) throw new ScanError("malformed-command", address);
          const target = this.cmd[1]! + this.cmd[2]! * 0x100000000;
          if (target % 4) throw new ScanError("malformed-command", address);
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
        if (client(dw0) === CLIENT_MI && miOpcode(dw0) === MiOp.BATCH_BUFFER_END) {
          if (level === 2) {
            level = 1;
            pc = returnPc;
          } else if (level === 1) level = 0;
          continue;
        }
        this.check(len, address);
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

  private check(len: number, address: number): void {
    const c = this.cmd;
    const dw0 = c[0]!;
    if (client(dw0) === CLIENT_MI) {
      switch (miOpcode(dw0)) {
        case MiOp.NOOP:
        case MiOp.USER_INTERRUPT:
          return;
        case MiOp.STORE_DATA_IMM: {
          if (len !== 4 && len !== 5) throw new ScanError("malformed-command", address);
          this.checkRange(c[1]! + c[2]! * 0x100000000, (len - 3) * 4, address);
          return;
        }
        case MiOp.LOAD_REGISTER_IMM: {
          if (len % 2 === 0) throw new ScanError("malformed-command", address);
          for (let i = 1; i < len; i += 2) {
            const n = (c[i]! - Reg.GPR0) / 4;
            if (!Number.isInteger(n) || n < 0 || n >= GPR_COUNT)
              throw new ScanError("register-not-allowed", address);
          }
          return;
        }
        case MiOp.FLUSH_DW: {
          if (len !== 4 && len !== 5) throw new ScanError("malformed-command", address);
          if (dw0 & FLUSH_POST_SYNC_WRITE)
            this.checkRange((c[1]! & ~7) + c[2]! * 0x100000000, (len - 3) * 4, address);
          return;
        }
      }
      throw new ScanError("privileged-command", address);
    }
    if (client(dw0) === CLIENT_2D) {
      const op = bltOpcode(dw0);
      const rop = (c[1]! >>> 16) & 0xff;
      const pitch = c[1]! & 0xffff;
      if ((c[1]! & (3 << 24)) !== BLT_DEPTH_32 || pitch === 0 || pitch % 4)
        throw new ScanError("malformed-command", address);
      const y1 = Math.max(0, s16(c[2]! >>> 16));
      const y2 = s16(c[3]! >>> 16);
      if (op === BltOp.XY_COLOR_BLT && len === 7 && rop === ROP_PATCOPY) {
        if (y2 > y1 && s16(c[3]!) > Math.max(0, s16(c[2]!)))
          this.checkRows(c[4]! + c[5]! * 0x100000000, pitch, y1, y2, address);
        return;
      }
      if (op === BltOp.XY_SRC_COPY_BLT && len === 10 && rop === ROP_SRCCOPY) {
        const srcPitch = c[7]! & 0xffff;
        if (srcPitch === 0 || srcPitch % 4) throw new ScanError("malformed-command", address);
        const h = y2 - s16(c[2]! >>> 16);
        if (h > 0 && s16(c[3]!) > s16(c[2]!)) {
          this.checkRows(c[4]! + c[5]! * 0x100000000, pitch, y1, y2, address);
          const sy = s16(c[6]! >>> 16);
          this.checkRows(c[8]! + c[9]! * 0x100000000, srcPitch, Math.max(0, sy), sy + h, address);
        }
        return;
      }
      throw new ScanError("malformed-command", address);
    }
    throw new ScanError("unknown-command", address);
  }

  /** Whole rows [y1, y2) of a surface must lie in the partition (blits clip only horizontally). */
  private checkRows(base: number, pitch: number, y1: number, y2: number, address: number): void {
    if (y2 <= y1) return;
    this.checkRange(base + y1 * pitch, (y2 - y1) * pitch, address);
  }
}

function s16(v: number): number {
  return (v << 16) >> 16;
}
