/**
 * A second serial line between the host and a guest (its /dev/ttyS1), for
 * telling a guest program when to go on: the guest prints HOST_WAIT=label on
 * its console and blocks reading a line here; the host does what it must at
 * that point (a screenshot, a stats snapshot, starting another guest) and then
 * sends "go". QEMU listens on a unix socket inside the tree; we connect.
 */
import { type Socket, createConnection } from "node:net";
import { socketPathInTree } from "./guest.js";

export interface HostLine {
  /** QEMU options that give the guest the line as its second serial port. */
  readonly qemuArgs: string[];
  /** Sends one line (connecting first, while QEMU comes up). */
  send(line: string): Promise<void>;
  close(): void;
}

export function hostLine(tree: string, name: string): HostLine {
  const path = socketPathInTree(tree, `line-${name}`);
  const id = `line${name.replace(/[^A-Za-z0-9]/g, "")}`;
  let socket: Socket | undefined;
  const connect = async (): Promise<Socket> => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path.hostPath);
          s.once("connect", () => resolve(s));
          s.once("error", reject);
        });
      } catch (e) {
        if (attempt > 100) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  return {
    qemuArgs: [
      "-chardev",
      `socket,id=${id},path=${path.guestPath},server=on,wait=off`,
      "-serial",
      `chardev:${id}`,
    ],
    async send(line: string) {
      socket ??= await connect();
      socket.on("data", () => {}); // the guest's echo, if any
      await new Promise<void>((resolve, reject) =>
        socket!.write(`${line}\n`, (e) => (e ? reject(e) : resolve())),
      );
    },
    close() {
      socket?.destroy();
    },
  };
}

/**
 * Calls `act(label)` once for each HOST_WAIT=label the guest prints, in order,
 * from an onOutput stream (markers may arrive split across chunks).
 */
export function onHostWait(act: (label: string) => void): (text: string) => void {
  let seen = "";
  let handled = 0;
  return (text) => {
    seen += text;
    const marks = [...seen.matchAll(/HOST_WAIT=([A-Za-z0-9_-]+)\r?\n/g)];
    for (; handled < marks.length; handled++) act(marks[handled]![1]!);
  };
}
