import { EAGAIN, EINTR } from "./errno-values.js";
import { closeFd } from "./fd.js";
import { EFD_CLOEXEC, EFD_NONBLOCK, allocNative, check, errno, libc } from "./libc.js";
import { SysError } from "./errors.js";

/** A Linux eventfd: the VFIO way to deliver interrupts and wake-ups. */
export class EventFd {
  readonly fd: number;
  private readonly counter = allocNative(8);
  private readonly view = new DataView(this.counter.bytes.buffer, this.counter.bytes.byteOffset, 8);
  private closed = false;

  /** Wraps an existing eventfd (e.g. one received over a socket), or creates one. */
  constructor(fd?: number, options: { nonBlocking?: boolean } = {}) {
    const flags = EFD_CLOEXEC | (options.nonBlocking ? EFD_NONBLOCK : 0);
    this.fd = fd ?? check("eventfd", libc.eventfd(0, flags));
  }

  /** Adds n to the counter, waking any reader. */
  signal(n = 1): void {
    this.view.setBigUint64(0, BigInt(n), true);
    for (;;) {
      if (libc.write(this.fd, this.counter.pointer, 8) === 8) return;
      const e = errno();
      if (e !== EINTR) throw new SysError("write(eventfd)", e);
    }
  }

  /**
   * Reads and resets the counter. Returns 0 if the eventfd is non-blocking and
   * nothing was signalled; a blocking eventfd waits for a signal.
   */
  read(): number {
    for (;;) {
      if (libc.read(this.fd, this.counter.pointer, 8) === 8) return Number(this.view.getBigUint64(0, true));
      const e = errno();
      if (e === EAGAIN) return 0;
      if (e !== EINTR) throw new SysError("read(eventfd)", e);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeFd(this.fd);
  }
}
