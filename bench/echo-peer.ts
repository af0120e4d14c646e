/**
 * The benchmark floor's other process: accepts one connection and answers each
 * request with `replySize` bytes, through src/sys and nothing else. Requests are
 * framed only by their known size (argv: socket, requestSize, replySize).
 */
import { rmSync } from "node:fs";
import { SocketChannel, acceptUnix, closeFd, listenUnix, pollOne, POLLIN } from "../src/sys/index.js";

const [path, requestArg, replyArg] = process.argv.slice(2);
const requestSize = Number(requestArg);
const replySize = Number(replyArg);
rmSync(path!, { force: true });
const listener = listenUnix(path!);
process.stdout.write("ready\n");
pollOne(listener, POLLIN, -1);
const fd = acceptUnix(listener)!;
closeFd(listener);
const ch = new SocketChannel(fd, { capacity: Math.max(requestSize, replySize) + 4096 });
for (;;) {
  let got = 0;
  while (got < requestSize) {
    const n = ch.recv(got, requestSize - got, true);
    if (n === 0) process.exit(0);
    got += n;
  }
  ch.send(replySize);
}
