/** DEVICE_RESET and DEVICE_FEATURE: whole-device control. */
import type { Message } from "../connection.js";
import { Errno, VfioUserError, invalid } from "../errors.js";
import { decodeFeature, encodeFeatureReply } from "../messages.js";
import type { Session } from "../session.js";
import { noFds } from "./common.js";

export function handleDeviceReset(s: Session, m: Message): number {
  noFds(m);
  if (m.payloadLength !== 0) throw invalid("DEVICE_RESET has no payload");
  s.device.reset();
  return 0;
}

export function handleDeviceFeature(s: Session, m: Message): number {
  noFds(m);
  const req = decodeFeature(m.reader());
  if (!s.device.feature) throw new VfioUserError(Errno.ENOTTY, "device has no features");
  const result = s.device.feature(req.flags, req.data, req.argsz);
  const w = s.conn.payloadWriter();
  encodeFeatureReply(w, req.argsz, req.flags, result.data ?? req.data);
  return w.length;
}
