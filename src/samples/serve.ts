#!/usr/bin/env node
/**
 * Serves the sample device, following the vfio-user backend conventions:
 * `--socket-path=PATH` or `--fd=N`, no daemonizing, SIGTERM honoured.
 */
import { Server } from "../vfio-user/index.js";
import { SampleDevice } from "./sample-device.js";

const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
const path = arg("socket-path");
const fd = arg("fd");
if (!path === !fd) {
  console.error("usage: serve --socket-path=PATH | --fd=N");
  process.exit(2);
}
const device = new SampleDevice();
const server = new Server(device.pci, { writeMultiple: true, twinSocket: true });
if (path) server.listen(path);
else server.listenOn(Number(fd));
// The loop blocks this thread; SIGTERM's default action ends the process, which
// is all the conventions ask (no state outlives it).
process.stdout.write("ready\n");
server.run();
