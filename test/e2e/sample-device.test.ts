/**
 * Issue: a minimal device served by the project's server is attached to the real
 * QEMU's vfio-user-pci, and a real Linux guest lists it under /sys/bus/pci with
 * the right ids and config space.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { SAMPLE_DEVICE, SAMPLE_VENDOR } from "../fixtures/sample-device.js";
import { startFixtureServer } from "../support/server-process.js";
import { bootGuest, requireGuestTree, sharedMemory, socketPathInTree, vfioUserDevice } from "./guest.js";

test("QEMU attaches the sample device and the guest sees its ids and config space", async (t) => {
  const tree = requireGuestTree(t);
  if (!tree) return;
  const sock = socketPathInTree(tree, "sample");
  const server = await startFixtureServer("serve-sample.js", [], { socketPath: sock.hostPath });
  try {
    const r = await bootGuest({
      tree,
      memoryMiB: 256,
      qemuArgs: [...sharedMemory(256), ...vfioUserDevice(sock.guestPath)],
      script: [
        "for d in /sys/bus/pci/devices/*; do",
        `  if [ "$(cat $d/vendor)" = "0x${SAMPLE_VENDOR.toString(16)}" ] && [ "$(cat $d/device)" = "0x${SAMPLE_DEVICE.toString(16)}" ]; then`,
        "    echo SLOT=$(basename $d)",
        "    echo VENDOR=$(cat $d/vendor); echo DEVICE=$(cat $d/device); echo CLASS=$(cat $d/class)",
        "    echo SUBSYSTEM=$(cat $d/subsystem_vendor):$(cat $d/subsystem_device)",
        "    echo CONFIG=$(hexdump -v -e '16/1 \"%02x\"' -n 64 $d/config)",
        "    echo RESOURCE0=$(sed -n 1p $d/resource)",
        "    echo RESOURCE2=$(sed -n 3p $d/resource)",
        "  fi",
        "done",
      ].join("\n"),
      timeoutMs: 120_000,
    });
    assert.equal(r.timedOut, false, r.output.slice(-3000));
    const v = r.values;
    assert.ok(
      v.SLOT,
      `device not listed by the guest:\n${r.output.slice(-3000)}\nserver log:\n${server.stderr()}`,
    );
    assert.equal(v.VENDOR, "0x1234");
    assert.equal(v.DEVICE, "0x4d47");
    assert.equal(v.CLASS, "0xff0000");
    assert.equal(v.SUBSYSTEM, "0x1234:0x0001");
    // Config space as the guest reads it: ids, then revision and class at 0x08.
    assert.equal(v.CONFIG!.slice(0, 8), "3412474d");
    assert.equal(v.CONFIG!.slice(16, 24), "010000ff");
    // BAR0 (4 KiB) and BAR2 (1 MiB) were assigned addresses by the guest.
    const [start0, end0] = v.RESOURCE0!.split(" ").map((x) => BigInt(x));
    const [start2, end2] = v.RESOURCE2!.split(" ").map((x) => BigInt(x));
    assert.ok(start0! > 0n && end0! - start0! + 1n === 0x1000n, v.RESOURCE0);
    assert.ok(start2! > 0n && end2! - start2! + 1n === 0x100000n, v.RESOURCE2);
  } finally {
    await server.stop();
  }
});
