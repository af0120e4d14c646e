/**
 * The project's one door to libc. Every binding is declared here, once, with
 * koffi; the rest of src/sys/ wraps them in typed, errno-checked functions.
 * Pointer arguments that point at long-lived native memory are passed as koffi
 * pointer objects; short-lived ones (a sockaddr) as Node Buffers.
 */
import koffi from "koffi";
import { SysError } from "./errors.js";

const lib = koffi.load("libc.so.6");

/** An opaque native pointer as koffi hands it out. */
export type NativePointer = object;

type Fn<A extends unknown[], R> = (...args: A) => R;
type AsyncFn<A extends unknown[], R> = {
  async: (...args: [...A, (err: unknown, result: R) => void]) => void;
};

function bind<A extends unknown[], R>(signature: string): Fn<A, R> & AsyncFn<A, R> {
  return lib.func(signature) as unknown as Fn<A, R> & AsyncFn<A, R>;
}

export const libc = {
  close: bind<[number], number>("int close(int fd)"),
  dup: bind<[number], number>("int dup(int fd)"),
  fcntl: bind<[number, number, number], number>("int fcntl(int fd, int cmd, int arg)"),
  read: bind<[number, NativePointer | Uint8Array, number], number>(
    "intptr_t read(int fd, void *buf, size_t n)",
  ),
  write: bind<[number, NativePointer | Uint8Array, number], number>(
    "intptr_t write(int fd, const void *buf, size_t n)",
  ),
  lseek: bind<[number, number, number], number>("int64_t lseek(int fd, int64_t offset, int whence)"),
  ftruncate: bind<[number, number], number>("int ftruncate(int fd, int64_t length)"),
  socket: bind<[number, number, number], number>("int socket(int domain, int type, int protocol)"),
  socketpair: bind<[number, number, number, Int32Array], number>(
    "int socketpair(int domain, int type, int protocol, _Out_ int *sv)",
  ),
  bind: bind<[number, Uint8Array, number], number>("int bind(int fd, const void *addr, uint32_t len)"),
  listen: bind<[number, number], number>("int listen(int fd, int backlog)"),
  accept4: bind<[number, null, null, number], number>(
    "int accept4(int fd, void *addr, void *len, int flags)",
  ),
  connect: bind<[number, Uint8Array, number], number>("int connect(int fd, const void *addr, uint32_t len)"),
  shutdown: bind<[number, number], number>("int shutdown(int fd, int how)"),
  setsockopt: bind<[number, number, number, Uint8Array, number], number>(
    "int setsockopt(int fd, int level, int name, const void *val, uint32_t len)",
  ),
  getsockopt: bind<[number, number, number, Uint8Array, Uint32Array], number>(
    "int getsockopt(int fd, int level, int name, _Out_ void *val, _Inout_ uint32_t *len)",
  ),
  sendto: bind<[number, Uint8Array, number, number, Uint8Array, number], number>(
    "intptr_t sendto(int fd, const void *buf, size_t n, int flags, const void *addr, uint32_t len)",
  ),
  flock: bind<[number, number], number>("int flock(int fd, int operation)"),
  sendmsg: bind<[number, NativePointer, number], number>(
    "intptr_t sendmsg(int fd, const void *msg, int flags)",
  ),
  recvmsg: bind<[number, NativePointer, number], number>("intptr_t recvmsg(int fd, void *msg, int flags)"),
  memfd_create: bind<[string, number], number>("int memfd_create(const char *name, unsigned int flags)"),
  mmap: bind<[null, number, number, number, number, number], NativePointer | null>(
    "void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t offset)",
  ),
  munmap: bind<[NativePointer, number], number>("int munmap(void *addr, size_t len)"),
  eventfd: bind<[number, number], number>("int eventfd(unsigned int initval, int flags)"),
  poll: bind<[NativePointer, number, number], number>("int poll(void *fds, unsigned long nfds, int timeout)"),
};

/** Declared separately: the same symbol with the address as an integer (MAP_FIXED remaps). */
export const mmapAt = lib.func("mmap", "void *", ["uintptr_t", "size_t", "int", "int", "int", "int64_t"]) as (
  addr: bigint,
  len: number,
  prot: number,
  flags: number,
  fd: number,
  offset: number,
) => NativePointer | null;

export function errno(): number {
  return koffi.errno();
}

/** Throws a SysError for a -1 result; returns the result otherwise. */
export function check(syscall: string, result: number): number {
  if (result < 0) throw new SysError(syscall, koffi.errno());
  return result;
}

/** Allocates native (non-GC-moved) memory: a pointer, its address, and a byte view. */
export function allocNative(
  length: number,
  zero = true,
): { pointer: NativePointer; address: bigint; bytes: Uint8Array } {
  const pointer = koffi.alloc("uint8_t", Math.max(length, 1)) as NativePointer;
  const bytes = new Uint8Array(koffi.view(pointer, length));
  // Large I/O buffers are left untouched so their pages are only committed when used.
  if (zero) bytes.fill(0);
  return { pointer, address: koffi.address(pointer), bytes };
}

export function freeNative(pointer: NativePointer): void {
  koffi.free(pointer);
}

export function viewNative(pointer: NativePointer, length: number): ArrayBuffer {
  return koffi.view(pointer, length);
}

export function addressOf(pointer: NativePointer): bigint {
  return koffi.address(pointer);
}

// Linux x86_64 / aarch64 constants (asm-generic values).
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_SNDTIMEO = 21;
export const SO_RCVTIMEO = 20;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_PEERCRED = 17;
export const SCM_RIGHTS = 1;
export const MSG_DONTWAIT = 0x40;
export const MSG_CTRUNC = 0x8;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_GETFD = 1;
export const O_NONBLOCK = 0o4000;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EFD_SEMAPHORE = 1;
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;
export const SEEK_END = 2;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
