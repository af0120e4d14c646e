/**
 * Interrupts as VFIO models them: per index (INTx, MSI, MSI-X, ERR, REQ) a set
 * of vectors, each with a trigger eventfd from the VMM, a VMM-side mask (SET_IRQS
 * MASK/UNMASK) and a pending bit. A vector that is masked — by the VMM or by the
 * guest's own mask bits in MSI/MSI-X — latches pending and fires on unmask.
 * Which index the device signals is chosen the VFIO way: by SET_IRQS (MSI-X or
 * MSI once the VMM wires eventfds to it, INTx otherwise).
 */
import { EventFd } from "../sys/index.js";
import {
  Errno,
  IRQ_INFO_AUTOMASKED,
  IRQ_INFO_EVENTFD,
  IRQ_INFO_MASKABLE,
  IRQ_INFO_NORESIZE,
  IRQ_SET_ACTION_MASK,
  IRQ_SET_ACTION_TRIGGER,
  IRQ_SET_ACTION_UNMASK,
  IRQ_SET_DATA_BOOL,
  IRQ_SET_DATA_EVENTFD,
  IRQ_SET_DATA_NONE,
  type IrqInfo,
  PCI_NUM_IRQS,
  PciIrq,
  type SetIrqsRequest,
  VfioUserError,
} from "../vfio-user/index.js";
import { Cfg, Command, ConfigSpace, Status } from "./config-space.js";
import type { MsiCapability, MsixCapability } from "./capabilities.js";

class Vector {
  trigger: EventFd | undefined;
  maskEvent: EventFd | undefined;
  unmaskEvent: EventFd | undefined;
  /** Masked by the VMM (SET_IRQS), or automatically after an INTx fires. */
  masked = false;
  pending = false;
}

export interface InterruptDeclaration {
  readonly intx?: boolean;
  readonly err?: boolean;
  readonly req?: boolean;
}

export class Interrupts {
  private readonly vectors: Vector[][];
  /** Deliveries per index, for tests and metrics. */
  readonly delivered = new Float64Array(PCI_NUM_IRQS);
  private intxLevel = false;

  constructor(
    private readonly cfg: ConfigSpace,
    decl: InterruptDeclaration,
    private readonly msi: MsiCapability | undefined,
    private readonly msix: MsixCapability | undefined,
  ) {
    const count = [
      decl.intx ? 1 : 0,
      msi?.vectors ?? 0,
      msix?.decl.vectors ?? 0,
      decl.err ? 1 : 0,
      decl.req ? 1 : 0,
    ];
    this.vectors = count.map((n) => Array.from({ length: n }, () => new Vector()));
  }

  irqInfo(index: number): IrqInfo {
    if (!Number.isInteger(index) || index < 0 || index >= PCI_NUM_IRQS)
      throw new VfioUserError(Errno.EINVAL, `no IRQ index ${index}`);
    const count = this.vectors[index]!.length;
    let flags = count > 0 ? IRQ_INFO_EVENTFD : 0;
    if (count > 0 && index === PciIrq.INTX) flags |= IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED;
    if (count > 0 && (index === PciIrq.MSI || index === PciIrq.MSIX)) flags |= IRQ_INFO_MASKABLE;
    if (index === PciIrq.MSI) flags |= IRQ_INFO_NORESIZE;
    return { index, flags, count };
  }

  /** The index the device signals now. */
  get mode(): "intx" | "msi" | "msix" {
    if (this.vectors[PciIrq.MSIX]!.some((v) => v.trigger)) return "msix";
    if (this.vectors[PciIrq.MSI]!.some((v) => v.trigger)) return "msi";
    return "intx";
  }

  setIrqs(req: SetIrqsRequest, fds: readonly number[]): void {
    const slots = this.vectors[req.index];
    if (!slots || slots.length === 0)
      throw new VfioUserError(Errno.EINVAL, `IRQ index ${req.index} not supported`);
    const dataType = req.flags & (IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD);
    const action = req.flags & (IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER);
    if (req.count === 0) {
      if (dataType === IRQ_SET_DATA_NONE && action === IRQ_SET_ACTION_TRIGGER && req.start === 0) {
        this.disable(req.index);
        return;
      }
      throw new VfioUserError(Errno.EINVAL, "SET_IRQS with count 0 only disables an index");
    }
    if (req.start + req.count > slots.length)
      throw new VfioUserError(
        Errno.EINVAL,
        `vectors ${req.start}..${req.start + req.count - 1} outside ${slots.length}`,
      );
    if (
      (action === IRQ_SET_ACTION_MASK || action === IRQ_SET_ACTION_UNMASK) &&
      !(this.irqInfo(req.index).flags & IRQ_INFO_MASKABLE)
    )
      throw new VfioUserError(Errno.EINVAL, `IRQ index ${req.index} is not maskable`);

    if (dataType === IRQ_SET_DATA_EVENTFD) {
      for (let i = 0; i < req.count; i++) {
        const v = slots[req.start + i]!;
        const fd = fds[i];
        const ev = fd === undefined ? undefined : new EventFd(fd);
        const key =
          action === IRQ_SET_ACTION_TRIGGER
            ? "trigger"
            : action === IRQ_SET_ACTION_MASK
              ? "maskEvent"
              : "unmaskEvent";
        v[key]?.close();
        v[key] = ev;
      }
      // A newly wired vector may have been waiting.
      if (action === IRQ_SET_ACTION_TRIGGER)
        for (let i = 0; i < req.count; i++) this.retry(req.index, req.start + i);
      return;
    }
    for (let i = 0; i < req.count; i++) {
      if (dataType === IRQ_SET_DATA_BOOL && !req.bools![i]) continue;
      const vector = req.start + i;
      const v = slots[vector]!;
      if (action === IRQ_SET_ACTION_TRIGGER) {
        this.deliver(req.index, vector);
      } else if (action === IRQ_SET_ACTION_MASK) {
        v.masked = true;
        v.maskEvent?.signal();
      } else {
        v.masked = false;
        v.unmaskEvent?.signal();
        if (req.index === PciIrq.INTX && this.intxLevel) v.pending = true;
        this.retry(req.index, vector);
      }
    }
  }

  /** The device raises an interrupt (vector for MSI/MSI-X; INTx is pulsed). */
  notify(vector = 0): void {
    const mode = this.mode;
    if (mode === "msix") this.deliver(PciIrq.MSIX, vector);
    else if (mode === "msi") this.deliver(PciIrq.MSI, vector);
    else {
      this.setIntx(true);
      this.setIntx(false);
    }
  }

  /** Drives the INTx line (level-triggered): asserting fires once until the VMM unmasks. */
  setIntx(level: boolean): void {
    if (this.vectors[PciIrq.INTX]!.length === 0) return;
    const rising = level && !this.intxLevel;
    this.intxLevel = level;
    const status = this.cfg.u16(Cfg.STATUS);
    this.cfg.set16(Cfg.STATUS, level ? status | Status.INTERRUPT : status & ~Status.INTERRUPT);
    if (rising) this.deliver(PciIrq.INTX, 0);
  }

  raiseError(): void {
    if (this.vectors[PciIrq.ERR]!.length > 0) this.deliver(PciIrq.ERR, 0);
  }

  requestRelease(): void {
    if (this.vectors[PciIrq.REQ]!.length > 0) this.deliver(PciIrq.REQ, 0);
  }

  /** Guest-side mask bits (MSI mask register, MSI-X table or function mask) changed. */
  masksChanged(): void {
    for (const index of [PciIrq.MSI, PciIrq.MSIX]) {
      const slots = this.vectors[index]!;
      for (let v = 0; v < slots.length; v++) this.retry(index, v);
    }
  }

  isPending(index: number, vector: number): boolean {
    return this.vectors[index]?.[vector]?.pending ?? false;
  }

  /** Function reset: masks and pending state cleared; the VMM's eventfd wiring stays. */
  reset(): void {
    this.intxLevel = false;
    for (const slots of this.vectors)
      for (const v of slots) {
        v.masked = false;
        v.pending = false;
      }
  }

  /** Eventfds held for the client (for its fd quota). */
  get heldFds(): number {
    let n = 0;
    for (const slots of this.vectors)
      for (const v of slots) n += (v.trigger ? 1 : 0) + (v.maskEvent ? 1 : 0) + (v.unmaskEvent ? 1 : 0);
    return n;
  }

  /** The client went away: every eventfd it gave us is closed. */
  release(): void {
    for (const slots of this.vectors)
      for (const v of slots) {
        for (const ev of [v.trigger, v.maskEvent, v.unmaskEvent]) ev?.close();
        v.trigger = v.maskEvent = v.unmaskEvent = undefined;
      }
    this.reset();
  }

  private disable(index: number): void {
    for (const v of this.vectors[index]!) {
      v.trigger?.close();
      v.trigger = undefined;
      v.pending = false;
    }
  }

  private guestMasked(index: number, vector: number): boolean {
    if (index === PciIrq.MSI && this.msi) return this.msi.masked(vector);
    if (index === PciIrq.MSIX && this.msix) return this.msix.masked(vector);
    if (index === PciIrq.INTX) return (this.cfg.u16(Cfg.COMMAND) & Command.INTX_DISABLE) !== 0;
    return false;
  }

  private setGuestPending(index: number, vector: number, pending: boolean): void {
    if (index === PciIrq.MSI) this.msi?.setPending(vector, pending);
    else if (index === PciIrq.MSIX) this.msix?.setPending(vector, pending);
  }

  private deliver(index: number, vector: number): void {
    const v = this.vectors[index]![vector];
    if (!v) return;
    if (v.masked || !v.trigger || this.guestMasked(index, vector)) {
      v.pending = true;
      this.setGuestPending(index, vector, true);
      return;
    }
    v.pending = false;
    this.setGuestPending(index, vector, false);
    if (index === PciIrq.INTX) v.masked = true; // automasked until the VMM unmasks
    v.trigger.signal();
    this.delivered[index]!++;
  }

  private retry(index: number, vector: number): void {
    const v = this.vectors[index]![vector];
    if (v?.pending) this.deliver(index, vector);
  }
}
