import type { Message } from "../connection.js";
import { commandName } from "../constants.js";
import { invalid } from "../errors.js";
import type { Session } from "../session.js";

/**
 * A command handler: decodes the request with the codecs of messages.ts, calls
 * the device, encodes the reply payload into the session's send buffer and
 * returns its length. Throwing VfioUserError makes the reply an error.
 */
export type Handler = (s: Session, m: Message) => number;

export function noFds(m: Message): void {
  if (m.fds.length > 0) throw invalid(`${commandName(m.command)} carries no fds`);
}
