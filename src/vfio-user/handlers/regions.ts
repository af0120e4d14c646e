/**
 * REGION_READ / REGION_WRITE / REGION_WRITE_MULTI: the trapped accesses. The
 * request is decoded in place and the device reads into / writes from the
 * connection's native buffers directly, so a trap allocates nothing.
 */
import type { Message } from "../connection.js";
import { HEADER_SIZE } from "../constants.js";
import { invalid } from "../errors.js";
import {
  REGION_ACCESS_SIZE,
  WRITE_MULTI_ENTRY_SIZE,
  decodeRegionAccess,
  decodeWriteMulti,
  encodeRegionAccess,
} from "../messages.js";
import type { Session } from "../session.js";
import { noFds } from "./common.js";

export function handleRegionRead(s: Session, m: Message): number {
  noFds(m);
  const a = decodeRegionAccess(
    m.view,
    m.payloadOffset,
    m.payloadLength,
    false,
    s.limits.maxDataXferSize,
    s.access,
  );
  s.endpoint.stats.regionReads[a.region & 15]!++;
  const at = HEADER_SIZE + REGION_ACCESS_SIZE;
  s.device.regionRead(a.region, a.offset, a.count, s.conn.channel.sendBuffer, at);
  encodeRegionAccess(s.conn.sendView, HEADER_SIZE, a.offset, a.region, a.count);
  return REGION_ACCESS_SIZE + a.count;
}

export function handleRegionWrite(s: Session, m: Message): number {
  noFds(m);
  const p = m.payloadOffset;
  const a = decodeRegionAccess(m.view, p, m.payloadLength, true, s.limits.maxDataXferSize, s.access);
  s.endpoint.stats.regionWrites[a.region & 15]!++;
  s.device.regionWrite(a.region, a.offset, a.count, s.conn.channel.recvBuffer, p + REGION_ACCESS_SIZE);
  // The reply is the request's offset/region/count.
  encodeRegionAccess(s.conn.sendView, HEADER_SIZE, a.offset, a.region, a.count);
  return REGION_ACCESS_SIZE;
}

export function handleRegionWriteMulti(s: Session, m: Message): number {
  noFds(m);
  if (!s.limits.writeMultiple || !s.peer.writeMultiple) throw invalid("REGION_WRITE_MULTI not negotiated");
  const writes = decodeWriteMulti(m.reader());
  const buf = s.conn.channel.recvBuffer;
  for (let i = 0; i < writes.length; i++) {
    const wr = writes[i]!;
    s.endpoint.stats.regionWrites[wr.region & 15]!++;
    s.device.regionWrite(
      wr.region,
      wr.offset,
      wr.count,
      buf,
      m.payloadOffset + 8 + i * WRITE_MULTI_ENTRY_SIZE + 16,
    );
  }
  const w = s.conn.payloadWriter();
  w.u64(writes.length);
  return w.length;
}
