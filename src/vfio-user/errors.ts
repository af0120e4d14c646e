import { constants } from "node:os";
import { errnoName } from "../sys/index.js";

export const Errno = constants.errno;

/**
 * A command that failed with an errno: thrown by a device handler to make the
 * server send an error reply, and thrown by the client when a reply says so.
 */
export class VfioUserError extends Error {
  readonly code: string;
  constructor(
    readonly errno: number,
    message?: string,
  ) {
    super(message ? `${errnoName(errno)}: ${message}` : errnoName(errno));
    this.name = "VfioUserError";
    this.code = errnoName(errno);
  }
}

/** The byte stream can no longer be trusted (or the peer went away): the connection is closed. */
export class ProtocolError extends Error {
  readonly code = "EPROTO";
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** Shorthand for the common "this request is malformed" error. */
export function invalid(message: string): VfioUserError {
  return new VfioUserError(Errno.EINVAL, message);
}
