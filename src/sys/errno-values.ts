import { constants } from "node:os";

// The errno values the system layer branches on, named once.
export const EINTR = constants.errno.EINTR;
export const EAGAIN = constants.errno.EAGAIN;
export const EINVAL = constants.errno.EINVAL;
export const EMSGSIZE = constants.errno.EMSGSIZE;
export const EBADF = constants.errno.EBADF;
export const ECONNRESET = constants.errno.ECONNRESET;
export const EPIPE = constants.errno.EPIPE;
export const ENAMETOOLONG = constants.errno.ENAMETOOLONG;
export const ETIMEDOUT = constants.errno.ETIMEDOUT;
export const EIO = constants.errno.EIO;
export const EMFILE = constants.errno.EMFILE;
export const ENFILE = constants.errno.ENFILE;
export const ENOBUFS = constants.errno.ENOBUFS;
