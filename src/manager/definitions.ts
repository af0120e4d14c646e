/**
 * Persistent vGPU definitions, like mdevctl's: one JSON file per vGPU in
 * `<state>/definitions`, checked against a schema (known type, UUID form, a
 * name for people), written atomically (write-file-atomic: temporary file,
 * fsync, rename; then an fsync of the directory), so a crash mid-write leaves
 * the old file or the new one, never a torn one.
 *
 * Reading trusts nothing in the folder: each file is opened O_NONBLOCK|O_NOFOLLOW
 * (a FIFO cannot hold the daemon, a symlink is not followed), must be a regular
 * file under a size cap, and is re-read only when its identity or mtime changes.
 * A file that is not a valid definition is *broken*: reported by name, shown,
 * never deleted or replaced unless asked to (`undefine`, `define --force`).
 */
import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  type FSWatcher,
  lstatSync,
  readdirSync,
  rmSync,
  statSync,
  watch,
} from "node:fs";
import { join } from "node:path";
import { Ajv } from "ajv";
import writeFileAtomic from "write-file-atomic";
import { ManagerError } from "./errors.js";
import { NAME_PATTERN, UUID_PATTERN, checkUuid, typeNames } from "./validate.js";
import { ensurePrivateDir } from "./paths.js";

export interface Definition {
  readonly uuid: string;
  readonly type: string;
  /** Started by `mgpu serve` when it comes up. */
  readonly autostart: boolean;
  readonly name?: string;
}

/** Larger files are not definitions (a definition is ~150 bytes). */
export const MAX_DEFINITION_BYTES = 64 * 1024;

const schema = {
  type: "object",
  additionalProperties: false,
  required: ["uuid", "type", "autostart"],
  properties: {
    uuid: { type: "string", pattern: UUID_PATTERN },
    type: { type: "string", enum: typeNames },
    autostart: { type: "boolean" },
    name: { type: "string", pattern: NAME_PATTERN },
  },
} as const;

const validate = new Ajv({ allErrors: true }).compile<Definition>(schema);

export class DefinitionError extends ManagerError {}

export interface BrokenDefinition {
  readonly file: string;
  /** The UUID its file name claims (undefined if the name is not `<uuid>.json`). */
  readonly uuid: string | undefined;
  readonly reason: string;
}

/** Checks a value against the schema; throws EINVAL naming every problem. */
export function checkDefinition(value: unknown, where = "definition"): Definition {
  if (validate(value)) return value;
  const problems = (validate.errors ?? [])
    .map((e) => {
      const field = e.instancePath || "/";
      if (e.keyword === "enum" && field === "/type")
        return `/type must be one of ${typeNames.join(", ")}, not ${JSON.stringify((value as { type?: unknown }).type)}`;
      if (e.keyword === "pattern" && field === "/name") return "/name must be 1 to 128 printable characters";
      if (e.keyword === "pattern" && field === "/uuid") return "/uuid must be a lower-case UUID";
      return `${field} ${e.message ?? "is invalid"}`;
    })
    .join("; ");
  throw new DefinitionError("EINVAL", `${where}: ${problems}`);
}

interface CachedFile {
  readonly key: string;
  readonly result: { definition: Definition } | { broken: BrokenDefinition };
}

/** Reads one file without following links or blocking on special files. */
function readDefinitionFile(file: string): string {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DefinitionError("EPERM", code === "ELOOP" ? "is a symbolic link (not followed)" : String(e));
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new DefinitionError("EPERM", "is not a regular file");
    if (st.size > MAX_DEFINITION_BYTES)
      throw new DefinitionError(
        "EPERM",
        `is ${st.size} bytes (a definition is at most ${MAX_DEFINITION_BYTES})`,
      );
    const buf = Buffer.alloc(Math.min(st.size + 1, MAX_DEFINITION_BYTES + 1));
    let n = 0;
    for (let got; n < buf.length && (got = readSync(fd, buf, n, buf.length - n, null)) > 0;) n += got;
    if (n > MAX_DEFINITION_BYTES) throw new DefinitionError("EPERM", "grew past the size cap while read");
    return buf.subarray(0, n).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

export interface Loaded {
  readonly definitions: readonly Definition[];
  readonly broken: readonly BrokenDefinition[];
}

export class DefinitionStore {
  readonly dir: string;
  private readonly cache = new Map<string, CachedFile>();
  /** With watch(): the last load, valid until the folder reports a change. */
  private snapshot: { loaded: Loaded; dirMtimeNs: bigint } | undefined;
  private watcher: FSWatcher | undefined;

  constructor(stateDir: string) {
    this.dir = join(stateDir, "definitions");
    ensurePrivateDir(this.dir);
  }

  private file(uuid: string): string {
    return join(this.dir, `${checkUuid(uuid)}.json`);
  }

  /**
   * Keeps load() from looking at the folder at all until it changes
   * (inotify through fs.watch, and the folder's mtime as a second witness):
   * for a daemon that lists definitions per request. close() stops it.
   */
  watch(): void {
    if (this.watcher) return;
    try {
      this.watcher = watch(this.dir, { persistent: false }, () => (this.snapshot = undefined));
      this.watcher.on("error", () => this.unwatch());
    } catch {
      this.watcher = undefined; // no inotify: every load() looks
    }
  }

  unwatch(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.snapshot = undefined;
  }

  /**
   * Every definition, and every file that is not one. A file is re-read only
   * when it changed (inode, size or mtime), so a daemon asking per request pays
   * one stat per file, not a read and a parse.
   */
  load(): Loaded {
    const dirMtimeNs = statSync(this.dir, { bigint: true }).mtimeNs;
    if (this.watcher && this.snapshot && this.snapshot.dirMtimeNs === dirMtimeNs) return this.snapshot.loaded;
    const definitions: Definition[] = [];
    const broken: BrokenDefinition[] = [];
    const seen = new Set<string>();
    for (const name of readdirSync(this.dir).sort()) {
      if (!name.endsWith(".json")) continue; // temporary files of an interrupted write
      seen.add(name);
      const r = this.loadFile(name);
      if ("definition" in r) definitions.push(r.definition);
      else broken.push(r.broken);
    }
    for (const name of this.cache.keys()) if (!seen.has(name)) this.cache.delete(name);
    const loaded = { definitions, broken };
    if (this.watcher) this.snapshot = { loaded, dirMtimeNs };
    return loaded;
  }

  private loadFile(name: string): CachedFile["result"] {
    const file = join(this.dir, name);
    const claimed = name.slice(0, -".json".length);
    const uuid = new RegExp(UUID_PATTERN).test(claimed) ? claimed : undefined;
    // lstat: never follows a link, never opens (a FIFO cannot block it).
    const st = lstatSync(file, { bigint: true, throwIfNoEntry: false });
    const key = st ? `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.mode}` : "gone";
    const hit = this.cache.get(name);
    if (hit && hit.key === key) return hit.result;
    let result: CachedFile["result"];
    try {
      const d = checkDefinition(JSON.parse(readDefinitionFile(file)), name);
      if (d.uuid !== claimed) throw new DefinitionError("EINVAL", `holds ${d.uuid}, not ${claimed}`);
      result = { definition: d };
    } catch (e) {
      const reason = e instanceof SyntaxError ? `not JSON (${e.message})` : (e as Error).message;
      result = { broken: { file, uuid, reason: reason.startsWith(name) ? reason : `${name}: ${reason}` } };
    }
    this.cache.set(name, { key, result });
    return result;
  }

  /** The definition of `uuid`, the broken file in its place, or nothing. */
  lookup(uuid: string): { definition?: Definition; broken?: BrokenDefinition } {
    const name = `${checkUuid(uuid)}.json`;
    if (!lstatSync(join(this.dir, name), { throwIfNoEntry: false })) {
      this.cache.delete(name);
      return {};
    }
    const r = this.loadFile(name);
    return "definition" in r ? { definition: r.definition } : { broken: r.broken };
  }

  get(uuid: string): Definition | undefined {
    return this.lookup(uuid).definition;
  }

  /** A new definition; over a broken file only with `force` (it is then replaced). */
  define(d: Definition, options: { force?: boolean } = {}): void {
    const next = checkDefinition(d);
    const old = this.lookup(next.uuid);
    if (old.definition) throw new DefinitionError("EEXIST", `vGPU ${next.uuid} is already defined`);
    if (old.broken && !options.force)
      throw new DefinitionError(
        "EEXIST",
        `a broken definition is in the way (${old.broken.reason}); see it with: mgpu list --defined; ` +
          `replace it with define --force, or remove it with undefine`,
      );
    if (old.broken) rmSync(old.broken.file, { force: true }); // a FIFO or link: rename would not replace it cleanly
    this.write(next);
  }

  modify(uuid: string, change: Partial<Omit<Definition, "uuid">>): Definition {
    const old = this.lookup(uuid);
    if (old.broken)
      throw new DefinitionError(
        "EBROKEN",
        `vGPU ${uuid}'s definition is broken (${old.broken.reason}); replace it with define --force, or undefine it`,
      );
    if (!old.definition) throw new DefinitionError("ENOENT", `vGPU ${uuid} is not defined`);
    const next = checkDefinition({ ...old.definition, ...change }, uuid);
    this.write(next);
    return next;
  }

  /** Deletes a definition, broken or not. */
  undefine(uuid: string): void {
    const old = this.lookup(uuid);
    const file = old.definition ? this.file(uuid) : old.broken?.file;
    if (!file) throw new DefinitionError("ENOENT", `vGPU ${uuid} is not defined`);
    rmSync(file, { force: true });
    this.cache.delete(`${uuid}.json`);
    this.snapshot = undefined;
    this.syncDir();
  }

  /** Atomic replace: readers (and a crash) see the old file or the new one. */
  private write(d: Definition): void {
    this.snapshot = undefined;
    writeFileAtomic.sync(this.file(d.uuid), JSON.stringify(d, null, 2) + "\n", { mode: 0o600, fsync: true });
    this.syncDir();
  }

  /** The rename (or unlink) is durable only once the directory is on disk. */
  private syncDir(): void {
    const dirFd = openSync(this.dir, "r");
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  }
}
