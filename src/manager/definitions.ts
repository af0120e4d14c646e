/**
 * Persistent vGPU definitions, like mdevctl's: one JSON file per vGPU in a
 * state directory, validated against a schema, written atomically (temporary
 * file, fsync, rename, fsync of the directory), so a crash mid-write leaves the
 * old file or the new one, never a torn one. A broken file is reported by name
 * and skipped; nothing here ever deletes a file it could not read.
 */
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { Ajv } from "ajv";

export interface Definition {
  readonly uuid: string;
  readonly type: string;
  /** Started by `mgpu serve` when it comes up. */
  readonly autostart: boolean;
  readonly name?: string;
}

const schema = {
  type: "object",
  additionalProperties: false,
  required: ["uuid", "type", "autostart"],
  properties: {
    uuid: { type: "string", pattern: "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" },
    type: { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9._-]+$" },
    autostart: { type: "boolean" },
    name: { type: "string", maxLength: 128 },
  },
} as const;

const validate = new Ajv({ allErrors: true }).compile<Definition>(schema);

export class DefinitionError extends Error {
  constructor(
    readonly code: "EINVAL" | "EEXIST" | "ENOENT",
    message: string,
  ) {
    super(message);
    this.name = "DefinitionError";
  }
}

export interface BrokenDefinition {
  readonly file: string;
  readonly reason: string;
}

/** Checks a value against the schema; throws a DefinitionError naming every problem. */
export function checkDefinition(value: unknown, where = "definition"): Definition {
  if (validate(value)) return value;
  const problems = (validate.errors ?? [])
    .map((e) => `${e.instancePath || "/"} ${e.message ?? "is invalid"}`)
    .join("; ");
  throw new DefinitionError("EINVAL", `${where}: ${problems}`);
}

export class DefinitionStore {
  readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, "definitions");
    mkdirSync(this.dir, { recursive: true });
  }

  private file(uuid: string): string {
    return join(this.dir, `${uuid}.json`);
  }

  /** Every readable definition, and every file that is not one (reported, left alone). */
  load(): { definitions: Definition[]; broken: BrokenDefinition[] } {
    const definitions: Definition[] = [];
    const broken: BrokenDefinition[] = [];
    for (const name of readdirSync(this.dir).sort()) {
      if (!name.endsWith(".json")) continue; // temporary files of an interrupted write
      const file = join(this.dir, name);
      try {
        const d = checkDefinition(JSON.parse(readFileSync(file, "utf8")), name);
        if (`${d.uuid}.json` !== name) throw new DefinitionError("EINVAL", `${name}: holds ${d.uuid}`);
        definitions.push(d);
      } catch (e) {
        broken.push({ file, reason: e instanceof Error ? e.message : String(e) });
      }
    }
    return { definitions, broken };
  }

  get(uuid: string): Definition | undefined {
    return this.load().definitions.find((d) => d.uuid === uuid);
  }

  define(d: Definition): void {
    checkDefinition(d);
    if (this.get(d.uuid)) throw new DefinitionError("EEXIST", `vGPU ${d.uuid} is already defined`);
    this.write(d);
  }

  modify(uuid: string, change: Partial<Omit<Definition, "uuid">>): Definition {
    const old = this.get(uuid);
    if (!old) throw new DefinitionError("ENOENT", `vGPU ${uuid} is not defined`);
    const next = checkDefinition({ ...old, ...change }, uuid);
    this.write(next);
    return next;
  }

  undefine(uuid: string): void {
    if (!this.get(uuid)) throw new DefinitionError("ENOENT", `vGPU ${uuid} is not defined`);
    rmSync(this.file(uuid));
  }

  /** Atomic replace: readers (and a crash) see the old file or the new one. */
  private write(d: Definition): void {
    const target = this.file(d.uuid);
    const tmp = join(this.dir, `.${d.uuid}.${process.pid}.tmp`);
    const fd = openSync(tmp, "w", 0o644);
    try {
      writeSync(fd, JSON.stringify(d, null, 2) + "\n");
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, target);
    const dirFd = openSync(this.dir, "r");
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  }
}
