/**
 * Tenant isolation through the real daemon and sockets (issue 11): what a
 * hostile VMM can do with the fd it is handed, and what a hostile guest can do
 * to the shared engine and the daemon's loop. Every test asserts an outcome —
 * the victim's memory checksum, a bound, an error state — never a time.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  MI_BATCH_BUFFER_END,
  PAGE_SIZE,
  miBatchBufferStart,
  miStoreDataImm,
  xyColorBlt,
} from "../../src/abi/index.js";
import { GuestDriver, GuestDriverError } from "../../src/guest/index.js";
import { ClientBus } from "../../src/vmm/client-bus.js";
import { Client } from "../../src/vfio-user/index.js";
import {
  Mapping,
  SIZE_SEALS,
  SysError,
  closeFd,
  createMemfd,
  fdSize,
  memfdSeals,
  truncateFd,
} from "../../src/sys/index.js";
import { ServeProcess } from "../support/serve-process.js";

const quiet = { logger: { error() {}, warn() {}, info() {}, debug() {} } };
let dir: string;
let serve: ServeProcess;
const A = "aaaaaaaa-0000-4000-8000-00000000000a";
const B = "bbbbbbbb-0000-4000-8000-00000000000b";
const MiB = 1 << 20;

interface Tenant {
  client: Client;
  bus: ClientBus;
  driver: GuestDriver;
  close(): void;
}

function attach(uuid: string): Tenant {
  const socket = serve.vgpus.find((v) => v.uuid === uuid)!.socket;
  const client = Client.connect(socket, quiet);
  const bus = new ClientBus(client);
  const driver = new GuestDriver(bus);
  driver.init();
  return {
    client,
    bus,
    driver,
    close() {
      bus.close();
      client.close();
    },
  };
}

async function checksum(uuid: string): Promise<string> {
  return (await serve.request({ cmd: "checksum", uuid })).sha256 as string;
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "mgpu-isolation-"));
  serve = await ServeProcess.start([`mgpu-1q:${A}`, `mgpu-1q:${B}`], dir);
});
after(async () => {
  await serve.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("a VMM's BAR0 fd holds only its own slice, sealed: remapping or truncating it reaches no one else", async () => {
  const a = attach(A);
  const b = attach(B);
  b.bus.barMemory(0)!.fill(0x5b);
  const victim = await checksum(B);

  const info = a.client.getRegionInfo(0);
  assert.ok(info.fd !== undefined, "BAR0 is mmappable");
  const fd = info.fd;
  const size = a.driver.partition.lmSize;
  assert.equal(info.offset, 0, "the slice starts at offset 0 of its own fd");
  assert.equal(info.size, size);
  assert.equal(fdSize(fd), size, "the fd is exactly the slice: nothing beyond it to map");
  assert.equal(memfdSeals(fd) & SIZE_SEALS, SIZE_SEALS, "shrink, grow and further seals are refused");

  // Map it at every offset a hostile VMM might try; all of it is A's own memory.
  const pattern = 0xa11ce000;
  for (const offset of [0, size / 2, size - PAGE_SIZE]) {
    const m = Mapping.ofFd(fd, size - offset, { offset });
    new Uint32Array(m.buffer).fill(pattern + offset / PAGE_SIZE);
    m.unmap();
  }
  // Truncating (which killed the daemon with SIGBUS) and growing are refused.
  for (const to of [0, size / 2, size * 2, 512 * MiB])
    assert.throws(
      () => truncateFd(fd, to),
      (e: unknown) => e instanceof SysError && e.code === "EPERM",
      `ftruncate to ${to}`,
    );
  assert.equal(fdSize(fd), size);

  // The daemon is alive, B is untouched, and A's slice is exactly what A wrote through its fd.
  assert.equal(await checksum(B), victim, "B's memory checksum unchanged");
  const expected = new Uint32Array(size / 4).fill(pattern);
  expected.fill(pattern + size / 2 / PAGE_SIZE, size / 8);
  expected.fill(pattern + (size - PAGE_SIZE) / PAGE_SIZE, (size - PAGE_SIZE) / 4);
  assert.equal(await checksum(A), sha256(new Uint8Array(expected.buffer)));
  closeFd(fd);
  a.close();
  b.close();
});

test("the shadow batch is out of every handed fd's reach: patching what the VMM can see runs nothing", async () => {
  const a = attach(A);
  const b = attach(B);
  // B's guest RAM, shared by fd (KVM style), one page of it in B's GTT.
  const ramSize = 1 * MiB;
  const ram = createMemfd("victim-ram", ramSize);
  const ramView = Mapping.ofFd(ram, ramSize);
  ramView.bytes.fill(0x42);
  b.client.dmaMap({ flags: 3, offset: 0n, address: 0x8000_0000n, size: BigInt(ramSize) }, ram);
  const pb = b.driver.partition;
  const victimIndex = pb.gmSize / PAGE_SIZE - 1;
  b.driver.writeGtt(victimIndex, 0x8000_0000 + 0x5000, true);
  const victimGma = pb.gmBase + victimIndex * PAGE_SIZE;
  const victimRam = sha256(ramView.bytes);

  // A's workload: long enough to be on the engine for many slices, then a store into A's own memory.
  const pa = a.driver.partition;
  const surface = a.driver.allocSurface(1024, 1024);
  const marker = a.driver.alloc(PAGE_SIZE);
  const batch = a.driver.alloc(PAGE_SIZE * 64);
  const cmds: number[] = [];
  for (let i = 0; i < 120; i++)
    cmds.push(...xyColorBlt(surface.gma, surface.pitch, { x: 0, y: 0, width: 1024, height: 1024 }, i));
  const store = miStoreDataImm(marker, 0x5afe0001);
  cmds.push(...store, MI_BATCH_BUFFER_END);
  const fb = a.bus.barMemory(0)!;
  const fbWords = new Uint32Array(fb.buffer, fb.byteOffset, fb.length / 4);
  fbWords.set(cmds, (batch - pa.gmBase) / 4);
  a.driver.submit(miBatchBufferStart(batch));

  // The hostile VMM maps everything its fd offers and rewrites every copy of the store it finds
  // (its own batch, and the shadow copy if it could reach it) to hit B's guest page instead.
  const info = a.client.getRegionInfo(0);
  const all = Mapping.ofFd(info.fd!, fdSize(info.fd!));
  const words = new Uint32Array(all.buffer);
  let patched = 0;
  for (let round = 0; round < 20; round++)
    for (
      let i = words.indexOf(store[0]!);
      i >= 0 && i + 3 < words.length;
      i = words.indexOf(store[0]!, i + 1)
    )
      if (words[i + 1] === store[1] && words[i + 3] === store[3]) {
        words[i + 1] = victimGma;
        words[i + 2] = 0;
        words[i + 3] = 0xbadbad01;
        patched++;
      }
  assert.ok(patched >= 1, "the VMM found the guest's own copy");
  try {
    a.driver.wait();
    const markerWord = new Uint32Array(fb.buffer, fb.byteOffset + (marker - pa.gmBase), 1)[0];
    assert.equal(markerWord, 0x5afe0001, "the scanned copy ran, not the patched one");
  } catch (e) {
    // A patch seen by the scanner is refused: outside A's partition.
    assert.ok(e instanceof GuestDriverError && e.code === "EIO", String(e));
    a.driver.recover();
  }
  assert.equal(sha256(ramView.bytes), victimRam, "B's guest RAM unchanged");
  assert.equal(new Uint32Array(ramView.buffer).indexOf(0xbadbad01), -1);
  all.unmap();
  closeFd(info.fd!);
  b.client.dmaUnmap(0x8000_0000n, BigInt(ramSize));
  ramView.unmap();
  closeFd(ram);
  a.close();
  b.close();
});
