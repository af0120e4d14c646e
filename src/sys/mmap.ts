import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
  type NativePointer,
  addressOf,
  check,
  errno,
  libc,
  mmapAt,
  viewNative,
} from "./libc.js";
import { SysError } from "./errors.js";

export interface MapOptions {
  readonly offset?: number;
  readonly readable?: boolean;
  readonly writable?: boolean;
}

/**
 * A shared mapping of (part of) a file as an ArrayBuffer, with no copy.
 *
 * Stale views are the danger of handing out raw memory: a JS view that outlives
 * munmap would fault. So a mapping is never unmapped while views may exist;
 * `revoke()` instead replaces the pages with private anonymous memory, so late
 * accesses read zeros and write nowhere, and the file is no longer reachable.
 * `unmap()` is for owners who know no view escaped.
 */
export class Mapping {
  readonly buffer: ArrayBuffer;
  readonly bytes: Uint8Array;
  readonly address: bigint;
  private state: "mapped" | "revoked" | "unmapped" = "mapped";

  private constructor(
    private readonly pointer: NativePointer,
    readonly length: number,
  ) {
    this.buffer = viewNative(pointer, length);
    this.bytes = new Uint8Array(this.buffer);
    this.address = addressOf(pointer);
  }

  static ofFd(fd: number, length: number, options: MapOptions = {}): Mapping {
    if (!Number.isSafeInteger(length) || length <= 0) throw new SysError("mmap", 22, `bad length ${length}`);
    const prot = (options.readable === false ? 0 : PROT_READ) | (options.writable === false ? 0 : PROT_WRITE);
    const pointer = libc.mmap(null, length, prot, MAP_SHARED, fd, options.offset ?? 0);
    if (pointer === null || addressOf(pointer) === 0xffffffffffffffffn) throw new SysError("mmap", errno());
    return new Mapping(pointer, length);
  }

  get revoked(): boolean {
    return this.state !== "mapped";
  }

  /** Cuts the link to the file; existing views stay valid but see private zero pages. */
  revoke(): void {
    if (this.state !== "mapped") return;
    const flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    const p = mmapAt(this.address, this.length, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p === null || addressOf(p) !== this.address) throw new SysError("mmap(MAP_FIXED)", errno());
    this.state = "revoked";
  }

  /** Releases the address range. Only safe if no view of `buffer` is used afterwards. */
  unmap(): void {
    if (this.state === "unmapped") return;
    check("munmap", libc.munmap(this.pointer, this.length));
    this.state = "unmapped";
  }
}
