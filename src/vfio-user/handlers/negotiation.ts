/** VERSION: the handshake that opens every session. */
import { socketPair } from "../../sys/index.js";
import { type Capabilities, parseCapabilities, serializeCapabilities } from "../capabilities.js";
import { Connection, type Message } from "../connection.js";
import { VERSION_MAJOR, VERSION_MINOR } from "../constants.js";
import { Errno, VfioUserError, invalid } from "../errors.js";
import { decodeVersion, encodeVersion } from "../messages.js";
import type { Session } from "../session.js";
import { noFds } from "./common.js";

export function handleVersion(s: Session, m: Message): number {
  noFds(m);
  if (s.negotiated) throw invalid("VERSION after negotiation");
  const v = decodeVersion(m.reader());
  if (v.major !== VERSION_MAJOR) throw new VfioUserError(Errno.ENOTSUP, `major version ${v.major}`);
  const peer = parseCapabilities(v.json);
  if (!(peer.pgsizes & 4096)) throw new VfioUserError(Errno.ENOTSUP, "client does not support 4 KiB pages");
  const limits = s.limits;
  const wantTwin = peer.twinSocket.supported && limits.twinSocket;
  const ours: Capabilities = {
    maxMsgFds: limits.maxMsgFds,
    maxDataXferSize: limits.maxDataXferSize,
    maxDmaMaps: limits.maxDmaMappings,
    pgsizes: 4096,
    writeMultiple: peer.writeMultiple && limits.writeMultiple,
    twinSocket: wantTwin ? { supported: true, fdIndex: 0 } : { supported: false },
    ...(peer.migration ? { migration: peer.migration } : {}),
  };
  const w = s.conn.payloadWriter();
  encodeVersion(w, {
    major: VERSION_MAJOR,
    minor: Math.min(v.minor, VERSION_MINOR),
    json: serializeCapabilities(ours),
  });
  if (wantTwin) {
    const [mine, theirs] = socketPair();
    s.twin = new Connection(mine, {
      maxMessageSize: limits.maxMessageSize,
      maxFds: 0,
      queueLimit: limits.queueLimit,
    });
    s.replyFds.push(theirs);
    s.closeAfterReply.push(theirs);
  }
  s.peer = peer;
  s.negotiated = true;
  const endpoint = s.endpoint;
  if (endpoint.owner !== undefined) endpoint.reapOwnerIfGone();
  if (endpoint.owner === undefined) {
    // The first to negotiate while nobody holds the device is its VMM.
    s.role = "owner";
    endpoint.owner = s;
    s.attached = true;
    s.device.attach?.(s);
  } else {
    s.role = "observer";
    endpoint.observers++;
    s.log.warn({}, "device is owned by another client: this one is a read-only observer");
  }
  return w.length;
}
