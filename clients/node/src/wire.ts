/**
 * bincode 2 "standard" primitives (PROTOCOL.md §3): little-endian, varint integers
 * (< 251 in one byte; 251 + u16, 252 + u32, 253 + u64), zigzag for signed, u8 tags for
 * `bool` and `Option`, length-prefixed UTF-8 strings and sequences.
 *
 * The {@link Reader} is strict: it refuses what the Rust decoder refuses — truncated
 * input, markers 254 and 255, a marker wider than its field allows, non-minimal varints
 * (each value has exactly one encoding), bools and option tags other than 0 and 1,
 * malformed UTF-8 — and a sequence whose declared length cannot fit in the bytes left is
 * refused before anything is allocated for it.
 *
 * @module
 */

import { InvalidArgumentError, ProtocolError } from "./errors.js";
import type { I64, U64 } from "./types.js";

const MAX_U16 = 0xffff;
const MAX_U32 = 0xffff_ffff;
const MAX_U64 = 0xffff_ffff_ffff_ffffn;
const MIN_I64 = -(1n << 63n);
const MAX_I64 = (1n << 63n) - 1n;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

const U16_MARKER = 251;
const U32_MARKER = 252;
const U64_MARKER = 253;

const utf8Encoder = new TextEncoder();
// fatal: malformed UTF-8 is an error, not U+FFFD; ignoreBOM: a leading U+FEFF is text.
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A string holding a lone surrogate cannot be UTF-8 (Rust strings cannot hold one). */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
function isWellFormed(text: string): boolean {
  const native = (text as { isWellFormed?: () => boolean }).isWellFormed;
  return native ? native.call(text) : !LONE_SURROGATE.test(text);
}

/** Narrows a u64 read from the wire: `number` when safe, `bigint` beyond. */
export function normalizeU64(value: bigint): U64 {
  return value <= MAX_SAFE ? Number(value) : value;
}

function normalizeI64(value: bigint): I64 {
  return value <= MAX_SAFE && value >= -MAX_SAFE ? Number(value) : value;
}

/** Builds one message's bytes; grows as needed. */
export class Writer {
  private buf: Uint8Array;
  private view: DataView;
  length = 0;

  constructor(initialCapacity = 128) {
    this.buf = new Uint8Array(initialCapacity);
    this.view = new DataView(this.buf.buffer);
  }

  private reserve(extra: number): void {
    const needed = this.length + extra;
    if (needed <= this.buf.length) return;
    const grown = new Uint8Array(Math.max(needed, this.buf.length * 2));
    grown.set(this.buf.subarray(0, this.length));
    this.buf = grown;
    this.view = new DataView(grown.buffer);
  }

  /** The bytes written so far (a view, not a copy). */
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }

  /** Writes a big-endian u32 at `offset` (the frame prefix). */
  patchU32BE(offset: number, value: number): void {
    this.view.setUint32(offset, value, false);
  }

  u8(value: number): void {
    this.reserve(1);
    this.buf[this.length++] = value;
  }

  raw(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.length);
    this.length += bytes.length;
  }

  /** An unsigned varint of a value already checked to be an integer in range. */
  private varint(value: number | bigint): void {
    if (typeof value === "bigint" && value <= MAX_SAFE) value = Number(value);
    if (typeof value === "number") {
      if (value < U16_MARKER) {
        this.u8(value);
      } else if (value <= MAX_U16) {
        this.reserve(3);
        this.buf[this.length] = U16_MARKER;
        this.view.setUint16(this.length + 1, value, true);
        this.length += 3;
      } else if (value <= MAX_U32) {
        this.reserve(5);
        this.buf[this.length] = U32_MARKER;
        this.view.setUint32(this.length + 1, value, true);
        this.length += 5;
      } else {
        this.bigVarint(BigInt(value));
      }
      return;
    }
    this.bigVarint(value);
  }

  private bigVarint(value: bigint): void {
    this.reserve(9);
    this.buf[this.length] = U64_MARKER;
    this.view.setBigUint64(this.length + 1, value, true);
    this.length += 9;
  }

  u16(value: number, what: string): void {
    this.varint(checkUint(value, MAX_U16, what));
  }

  u32(value: number, what: string): void {
    this.varint(checkUint(value, MAX_U32, what));
  }

  u64(value: U64, what: string): void {
    if (typeof value === "bigint") {
      if (value < 0n || value > MAX_U64) throw new InvalidArgumentError(`${what}: ${value} is not a u64`);
      this.varint(value);
      return;
    }
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new InvalidArgumentError(`${what}: ${String(value)} is not a u64 (use a bigint beyond 2^53 - 1)`);
    }
    this.varint(value);
  }

  i64(value: I64, what: string): void {
    let big: bigint;
    if (typeof value === "bigint") {
      big = value;
    } else {
      if (!Number.isSafeInteger(value)) {
        throw new InvalidArgumentError(`${what}: ${String(value)} is not an i64 (use a bigint beyond ±(2^53 - 1))`);
      }
      big = BigInt(value);
    }
    if (big < MIN_I64 || big > MAX_I64) throw new InvalidArgumentError(`${what}: ${value} is not an i64`);
    // zigzag: 0 → 0, -1 → 1, 1 → 2, -2 → 3, ...
    this.varint(big >= 0n ? big << 1n : (-big << 1n) - 1n);
  }

  bool(value: boolean, what: string): void {
    if (typeof value !== "boolean") throw new InvalidArgumentError(`${what}: expected a boolean, got ${typeof value}`);
    this.u8(value ? 1 : 0);
  }

  f32(value: number, what: string): void {
    if (typeof value !== "number") throw new InvalidArgumentError(`${what}: expected a number, got ${typeof value}`);
    // setFloat32 would turn a value beyond ±3.4e38 into ±Infinity without a word (and
    // pass NaN/Infinity on): no parameter of the protocol means either.
    if (!Number.isFinite(Math.fround(value))) {
      throw new InvalidArgumentError(`${what}: ${value} is not a finite f32 (at most ±3.4028235e38)`);
    }
    this.reserve(4);
    this.view.setFloat32(this.length, value, true);
    this.length += 4;
  }

  string(value: string, what: string): void {
    if (typeof value !== "string") throw new InvalidArgumentError(`${what}: expected a string, got ${typeof value}`);
    if (!isWellFormed(value)) throw new InvalidArgumentError(`${what}: the string holds a lone surrogate (not UTF-8)`);
    this.byteString(utf8Encoder.encode(value));
  }

  /** `Vec<u8>`: a length, then the bytes. */
  byteString(value: Uint8Array): void {
    this.varint(value.length);
    this.raw(value);
  }

  seq<T>(items: readonly T[], what: string, each: (item: T, index: number) => void): void {
    if (!Array.isArray(items)) throw new InvalidArgumentError(`${what}: expected an array`);
    this.varint(items.length);
    items.forEach(each);
  }

  option<T>(value: T | null | undefined, each: (value: T) => void): void {
    if (value === null || value === undefined) {
      this.u8(0);
    } else {
      this.u8(1);
      each(value);
    }
  }

  /** An enum's variant index. */
  tag(index: number): void {
    this.varint(index);
  }
}

function checkUint(value: number, max: number, what: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > max) {
    const kind = max === MAX_U16 ? "u16" : "u32";
    throw new InvalidArgumentError(`${what}: ${String(value)} is not a ${kind}`);
  }
  return value;
}

/** Reads one message's bytes strictly; every failure is a {@link ProtocolError}. */
export class Reader {
  private pos = 0;
  private readonly view: DataView;

  constructor(private readonly input: Uint8Array) {
    this.view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  }

  fail(message: string): never {
    throw new ProtocolError(`malformed frame body (byte ${this.pos} of ${this.input.length}): ${message}`);
  }

  get remaining(): number {
    return this.input.length - this.pos;
  }

  private need(count: number, what: string): void {
    if (count > this.remaining) this.fail(`${what} needs ${count} bytes, ${this.remaining} left`);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.input[this.pos++]!;
  }

  /** An unsigned varint whose marker is at most `widest` (the field's width). */
  private varint(widest: number, what: string): number | bigint {
    const first = this.u8(what);
    if (first < U16_MARKER) return first;
    if (first > U64_MARKER) this.fail(`${what}: invalid varint marker ${first}`);
    if (first > widest) this.fail(`${what}: varint marker ${first} is too wide for the field`);
    let value: number | bigint;
    if (first === U16_MARKER) {
      this.need(2, what);
      value = this.view.getUint16(this.pos, true);
      this.pos += 2;
      if (value < U16_MARKER) this.fail(`${what}: ${value} is not minimally encoded`);
    } else if (first === U32_MARKER) {
      this.need(4, what);
      value = this.view.getUint32(this.pos, true);
      this.pos += 4;
      if (value <= MAX_U16) this.fail(`${what}: ${value} is not minimally encoded`);
    } else {
      this.need(8, what);
      value = this.view.getBigUint64(this.pos, true);
      this.pos += 8;
      if (value <= BigInt(MAX_U32)) this.fail(`${what}: ${value} is not minimally encoded`);
    }
    return value;
  }

  u16(what: string): number {
    return this.varint(U16_MARKER, what) as number;
  }

  u32(what: string): number {
    return this.varint(U32_MARKER, what) as number;
  }

  u64(what: string): U64 {
    const value = this.varint(U64_MARKER, what);
    return typeof value === "bigint" ? normalizeU64(value) : value;
  }

  i64(what: string): I64 {
    const raw = this.varint(U64_MARKER, what);
    const zigzag = typeof raw === "bigint" ? raw : BigInt(raw);
    return normalizeI64(zigzag & 1n ? -((zigzag + 1n) >> 1n) : zigzag >> 1n);
  }

  /** A length (u64 varint) that must fit, at `minBytes` per element, in the bytes left. */
  length(minBytes: number, what: string): number {
    const count = this.u64(what);
    if (typeof count === "bigint" || count * minBytes > this.remaining) {
      this.fail(`${what}: declares length ${count}, only ${this.remaining} bytes left`);
    }
    return count;
  }

  bool(what: string): boolean {
    const byte = this.u8(what);
    if (byte > 1) this.fail(`${what}: bool must be 0 or 1, got ${byte}`);
    return byte === 1;
  }

  f32(what: string): number {
    this.need(4, what);
    const value = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return value;
  }

  /** `Vec<f32>` into a Float32Array (a copy: the frame's bytes are not kept). */
  f32Array(what: string): Float32Array {
    const count = this.length(4, what);
    const out = new Float32Array(count);
    if (LITTLE_ENDIAN) {
      new Uint8Array(out.buffer).set(this.input.subarray(this.pos, this.pos + count * 4));
    } else {
      for (let i = 0; i < count; i++) out[i] = this.view.getFloat32(this.pos + i * 4, true);
    }
    this.pos += count * 4;
    return out;
  }

  byteString(what: string): Uint8Array {
    const count = this.length(1, what);
    // A copy, and a plain Uint8Array even when the input is a Buffer.
    const out = new Uint8Array(this.input.subarray(this.pos, this.pos + count));
    this.pos += count;
    return out;
  }

  string(what: string): string {
    const count = this.length(1, what);
    const bytes = this.input.subarray(this.pos, this.pos + count);
    let text: string;
    try {
      text = utf8Decoder.decode(bytes);
    } catch {
      this.fail(`${what}: not valid UTF-8`);
    }
    this.pos += count;
    return text;
  }

  seq<T>(what: string, each: () => T): T[] {
    const count = this.length(1, what);
    const out: T[] = new Array<T>(count);
    for (let i = 0; i < count; i++) out[i] = each();
    return out;
  }

  option<T>(what: string, each: () => T): T | null {
    const tag = this.u8(what);
    if (tag === 0) return null;
    if (tag === 1) return each();
    return this.fail(`${what}: option tag must be 0 or 1, got ${tag}`);
  }

  /** An enum's variant, by its index in `names`. */
  tag<N extends string>(names: readonly N[], what: string): N {
    const index = this.u32(what);
    const name = names[index];
    if (name === undefined) this.fail(`${what}: unknown variant ${index} (this client knows ${names.length})`);
    return name;
  }

  /** The body must be one message, nothing after it. */
  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} trailing bytes after the message`);
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
