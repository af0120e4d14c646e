/**
 * The paravirtual info block ("MGPV"): read-only dwords telling an
 * enlightened guest driver where its partition is (GVT-g's ballooning idea).
 * Its values are fixed for the vGPU's life, so they are laid out once.
 */
import { Bar2, PV_INFO_SIZE, PV_MAGIC, PV_VERSION, PvInfo } from "../../abi/index.js";
import { type RegionHandler, valueRegisters } from "../../pci/index.js";

export interface PvInfoValues {
  readonly lmBase: number;
  readonly lmSize: number;
  readonly gmBase: number;
  readonly gmSize: number;
  readonly gttEntries: number;
  readonly maxWidth: number;
  readonly maxHeight: number;
}

export function pvInfoBlock(v: PvInfoValues): RegionHandler {
  const words = new Uint32Array(PV_INFO_SIZE / 4);
  const put = (offset: number, value: number) => void (words[offset / 4] = value);
  put(PvInfo.MAGIC, PV_MAGIC);
  put(PvInfo.VERSION, PV_VERSION);
  put(PvInfo.LM_BASE_LO, v.lmBase >>> 0);
  put(PvInfo.LM_BASE_HI, Math.floor(v.lmBase / 0x100000000));
  put(PvInfo.LM_SIZE, v.lmSize);
  put(PvInfo.GM_BASE, v.gmBase);
  put(PvInfo.GM_SIZE, v.gmSize);
  put(PvInfo.GTT_OFFSET, Bar2.GTT);
  put(PvInfo.GTT_ENTRIES, v.gttEntries);
  put(PvInfo.MAX_WIDTH, v.maxWidth);
  put(PvInfo.MAX_HEIGHT, v.maxHeight);
  // Reads see the whole dword an access starts in; writes are ignored.
  return valueRegisters({ read: (offset) => words[offset >> 2]! });
}
