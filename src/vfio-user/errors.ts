import { constants } from "node:os";
import { MgpuError } from "../base/index.js";
import { errnoName } from "../sys/index.js";

export const Errno = constants.errno;

/**
 * A command that failed with an errno: thrown by a device handler to make the
 * server send an error reply, and thrown by the client when a reply says so.
 * `code` is the errno's name ("EINVAL").
 */
export class VfioUserError extends MgpuError {
  constructor(
    readonly errno: number,
    message?: string,
  ) {
    super(errnoName(errno), message ? `${errnoName(errno)}: ${message}` : errnoName(errno));
  }
}

/** The byte stream can no longer be trusted (or the peer went away): the connection is closed. */
export class ProtocolError extends MgpuError {
  constructor(message: string) {
    super("EPROTO", message);
  }
}

/** A server or client used against its own contract (a programming error, not a peer's). */
export class UsageError extends MgpuError {
  constructor(message: string) {
    super("EUSAGE", message);
  }
}

/** Shorthand for the common "this request is malformed" error. */
export function invalid(message: string): VfioUserError {
  return new VfioUserError(Errno.EINVAL, message);
}
