/** MIG_DATA_READ / MIG_DATA_WRITE: the migration data stream. */
import type { Message } from "../connection.js";
import { invalid } from "../errors.js";
import { decodeMigDataReadRequest, decodeMigDataWrite, encodeMigData } from "../messages.js";
import type { Session } from "../session.js";
import { noFds } from "./common.js";

export function handleMigDataRead(s: Session, m: Message): number {
  noFds(m);
  const size = decodeMigDataReadRequest(m.reader(), s.limits.maxDataXferSize);
  if (!s.device.migrationRead) throw invalid("device does not migrate");
  const w = s.conn.payloadWriter();
  encodeMigData(w, s.device.migrationRead(size));
  return w.length;
}

export function handleMigDataWrite(s: Session, m: Message): number {
  noFds(m);
  const data = decodeMigDataWrite(m.reader(), s.limits.maxDataXferSize);
  if (!s.device.migrationWrite) throw invalid("device does not migrate");
  s.device.migrationWrite(data);
  return 0;
}
