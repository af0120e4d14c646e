import { EINTR, EIO } from "./errno-values.js";
import { type NativePointer, allocNative, errno, freeNative, libc } from "./libc.js";
import { SysError } from "./errors.js";

export { POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT } from "./libc.js";

const POLLFD_SIZE = 8;

/**
 * A reusable pollfd array in native memory, so a wait costs one call and no
 * allocation. `wait` blocks the calling thread; `waitAsync` runs the same poll
 * on koffi's worker pool and resolves on the event loop.
 */
export class Poller {
  private native: { pointer: NativePointer; bytes: Uint8Array };
  private view: DataView;
  private capacity: number;
  private entries = 0;

  constructor(capacity = 8) {
    this.capacity = capacity;
    this.native = allocNative(capacity * POLLFD_SIZE);
    this.view = new DataView(this.native.bytes.buffer, this.native.bytes.byteOffset, capacity * POLLFD_SIZE);
  }

  get count(): number {
    return this.entries;
  }

  /** Replaces the watched set. */
  setAll(fds: readonly number[], events: number): void {
    this.ensure(fds.length);
    this.entries = fds.length;
    for (let i = 0; i < fds.length; i++) this.set(i, fds[i]!, events);
  }

  set(index: number, fd: number, events: number): void {
    this.ensure(index + 1);
    if (index >= this.entries) this.entries = index + 1;
    this.view.setInt32(index * POLLFD_SIZE, fd, true);
    this.view.setInt16(index * POLLFD_SIZE + 4, events, true);
    this.view.setInt16(index * POLLFD_SIZE + 6, 0, true);
  }

  fd(index: number): number {
    return this.view.getInt32(index * POLLFD_SIZE, true);
  }

  revents(index: number): number {
    return this.view.getInt16(index * POLLFD_SIZE + 6, true);
  }

  /** Waits up to timeoutMs (-1: forever). Returns the number of ready entries; 0 on timeout or EINTR. */
  wait(timeoutMs: number): number {
    const n = libc.poll(this.native.pointer, this.entries, timeoutMs);
    if (n >= 0) return n;
    const e = errno();
    if (e === EINTR) return 0;
    throw new SysError("poll", e);
  }

  /** The same wait on a worker thread; the event loop stays free. */
  waitAsync(timeoutMs: number): Promise<number> {
    return new Promise((resolve, reject) => {
      libc.poll.async(this.native.pointer, this.entries, timeoutMs, (err, n) => {
        if (err) reject(err instanceof Error ? err : new SysError("poll", EIO, String(err)));
        else resolve(n < 0 ? 0 : n);
      });
    });
  }

  close(): void {
    freeNative(this.native.pointer);
    this.capacity = 0;
  }

  private ensure(size: number): void {
    if (size <= this.capacity) return;
    const capacity = Math.max(size, this.capacity * 2);
    const next = allocNative(capacity * POLLFD_SIZE);
    next.bytes.set(this.native.bytes.subarray(0, this.entries * POLLFD_SIZE));
    freeNative(this.native.pointer);
    this.native = next;
    this.view = new DataView(next.bytes.buffer, next.bytes.byteOffset, capacity * POLLFD_SIZE);
    this.capacity = capacity;
  }
}

/** Waits for one fd to become ready; returns its revents (0 on timeout). */
export function pollOne(fd: number, events: number, timeoutMs: number): number {
  const poller = scratchPoller ?? (scratchPoller = new Poller(1));
  poller.set(0, fd, events);
  return poller.wait(timeoutMs) > 0 ? poller.revents(0) : 0;
}
let scratchPoller: Poller | undefined;
