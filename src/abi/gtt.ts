/**
 * The GTT entry format, the parent's and a vGPU's alike: 64 bits, a valid bit,
 * a "system memory" bit (else the page is in local memory), and the page
 * address in bits 12..63. In BAR2 each entry is two dwords, low first; an
 * entry takes effect when its low dword is written.
 */

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;

export const GTT_VALID = 1;
export const GTT_SYSTEM = 2;
/** The page-address bits of an entry's low dword. */
export const GTT_ADDRESS_MASK = 0xfffff000;
export const GTT_ENTRY_BYTES = 8;
/** A vGPU accepts system-memory (guest-physical) pages below this address. */
export const GTT_SYSTEM_ADDRESS_LIMIT = 2 ** 44;

/** One entry as its two dwords. */
export function gttDwords(kind: "local" | "system", address: number): { lo: number; hi: number } {
  return {
    lo: ((address & GTT_ADDRESS_MASK) | GTT_VALID | (kind === "system" ? GTT_SYSTEM : 0)) >>> 0,
    hi: Math.floor(address / 0x100000000) >>> 0,
  };
}

/** One entry as a 64-bit value. */
export function gttEntry(kind: "local" | "system", address: number | bigint): bigint {
  return (BigInt(address) & ~0xfffn) | BigInt(GTT_VALID) | (kind === "system" ? BigInt(GTT_SYSTEM) : 0n);
}
