import { constants } from "node:os";

// The errno values the system layer branches on, named once.
export const {
  EINTR,
  EAGAIN,
  EINVAL,
  EMSGSIZE,
  EBADF,
  ECONNRESET,
  EPIPE,
  ENAMETOOLONG,
  ETIMEDOUT,
  EIO,
  EMFILE,
  ENFILE,
  ENOBUFS,
} = constants.errno;
