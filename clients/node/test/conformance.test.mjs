// The language-neutral conformance vectors (proto/conformance/vectors.json, written by
// proto/tests/conformance.rs): every message decodes to its JSON form and re-encodes to the
// same bytes; every varint decodes to its value and back; every invalid body is refused.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  CONSTRAINT_TYPES,
  EVENT_TYPES,
  FINISH_REASONS,
  PROTOCOL_VERSION,
  ProtocolError,
  REQUEST_TYPES,
  RESPONSE_TYPES,
  Reader,
  TOOL_CHOICE_TYPES,
  Writer,
  decodeClientMessage,
  decodeServerMessage,
  encodeClientMessage,
  encodeServerMessage,
} from "../dist/index.js";
import { repoRoot } from "./helpers.mjs";

const vectorsPath = process.env.MLXD_CONFORMANCE_VECTORS ?? `${repoRoot}/proto/conformance/vectors.json`;
const vectors = JSON.parse(readFileSync(vectorsPath, "utf8"));

const unhex = (hex) => Uint8Array.from(Buffer.from(hex, "hex"));
const hex = (bytes) => Buffer.from(bytes).toString("hex");

/** f32 fields: the JSON holds the f32 widened to f64; compare after rounding to f32. */
const F32_KEYS = new Set([
  "temperature",
  "top_p",
  "min_p",
  "repetition_penalty",
  "prompt_tokens_per_s",
  "generation_tokens_per_s",
  "score",
  "logprob",
]);

/**
 * serde's externally tagged JSON → this package's shapes (see src/types.ts): a variant is
 * `{ type, ...fields }` when it wraps a struct (or is a struct variant), else
 * `{ type, value }`; a unit variant of a mixed enum (a request or response body, a
 * constraint, a tool choice) is `{ type }`; all-unit enums stay strings; stop strings are Uint8Arrays and embedding
 * vectors a Float32Array.
 */
function fromSerde(value, key) {
  if (Array.isArray(value)) {
    if (key === "stop") return value.map((bytes) => Uint8Array.from(bytes));
    if (key === "vectors") return Float32Array.from(value);
    return value.map((item) => fromSerde(item, `${key}[]`));
  }
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && /^[A-Z]/.test(keys[0])) {
      const [type] = keys;
      const payload = value[type];
      if (payload !== null && typeof payload === "object" && !Array.isArray(payload)) {
        return { type, ...fields(payload) };
      }
      return { type, value: fromSerde(payload, type) };
    }
    return fields(value);
  }
  if (typeof value === "string" && (key === "body" || key === "constraint" || key === "tool_choice")) return { type: value };
  if (typeof value === "number") {
    if (F32_KEYS.has(key)) return Math.fround(value);
    // JSON.parse rounds integers beyond 2^53; such a vector needs a lossless parser here.
    assert.ok(Number.isSafeInteger(value), `${key} = ${value} is not a safe integer in the JSON`);
  }
  return value;
}

function fields(object) {
  return Object.fromEntries(Object.entries(object).map(([k, v]) => [k, fromSerde(v, k)]));
}

test("the vectors are for this client's protocol version", () => {
  assert.equal(vectors.protocol_version, PROTOCOL_VERSION);
  assert.ok(vectors.messages.length >= 60, `${vectors.messages.length} message vectors`);
});

test("every message vector decodes to its JSON form and re-encodes byte for byte", () => {
  const seen = new Set();
  for (const vector of vectors.messages) {
    const body = unhex(vector.body);
    const expected = fromSerde(vector.message, "message");
    const [decode, encode] =
      vector.direction === "client"
        ? [decodeClientMessage, encodeClientMessage]
        : [decodeServerMessage, encodeServerMessage];
    const decoded = decode(body);
    assert.deepStrictEqual(decoded, expected, `${vector.name}: decoded`);
    assert.equal(hex(encode(expected)), vector.body, `${vector.name}: encoded from JSON`);
    assert.equal(hex(encode(decoded)), vector.body, `${vector.name}: re-encoded`);
    // Decoding from a Buffer (what a socket delivers) gives the same.
    assert.deepStrictEqual(decode(Buffer.from(vector.body, "hex")), expected, `${vector.name}: from a Buffer`);
    seen.add(`${vector.direction}:${decoded.type}:${decoded.body?.type ?? decoded.event?.type ?? decoded.error?.code ?? ""}`);
  }
  // Every request and response variant is covered (Rerank and Reranked since v4).
  assert.ok(REQUEST_TYPES.includes("Rerank") && RESPONSE_TYPES.includes("Reranked"));
  for (const type of REQUEST_TYPES) {
    assert.ok(seen.has(`client:Request:${type}`), `no vector for Request ${type}`);
  }
  for (const type of RESPONSE_TYPES) {
    assert.ok(seen.has(`server:Response:${type}`), `no vector for Response ${type}`);
  }
  for (const type of EVENT_TYPES) {
    assert.ok(seen.has(`server:Event:${type}`), `no vector for Event ${type}`);
  }
  // A Token event with logprobs (since v5), with and without alternatives.
  const tops = vectors.messages
    .map((vector) => vector.message.Event?.event?.Token?.logprobs?.top)
    .filter((top) => Array.isArray(top))
    .map((top) => top.length);
  assert.ok(tops.some((n) => n > 0) && tops.includes(0), `Token logprobs vectors: ${tops}`);
  // Every kind of constraint (since v6).
  const constraints = vectors.messages
    .map((vector) => vector.message.Request?.body?.Generate?.params?.constraint)
    .filter((constraint) => constraint !== undefined && constraint !== null)
    .map((constraint) => (typeof constraint === "string" ? constraint : Object.keys(constraint)[0]));
  assert.deepEqual([...new Set(constraints)].sort(), [...CONSTRAINT_TYPES].sort(), `constraint vectors: ${constraints}`);
  // Since v7: every tool choice, tools, a chat with a tool call and a tool's answer, and
  // every finish reason (ToolCalls among them).
  const generates = vectors.messages.map((vector) => vector.message.Request?.body?.Generate).filter((g) => g !== undefined);
  const choices = generates.map((g) => g.params.tool_choice).map((choice) => (typeof choice === "string" ? choice : Object.keys(choice)[0]));
  assert.deepEqual([...new Set(choices)].sort(), [...TOOL_CHOICE_TYPES].sort(), `tool_choice vectors: ${choices}`);
  assert.ok(generates.some((g) => g.params.tools.length > 0), "no vector with tools");
  const messages = generates.flatMap((g) => g.input.Chat ?? []);
  assert.ok(messages.some((m) => m.tool_calls.length > 0) && messages.some((m) => m.tool_call_id !== null && m.name !== null), "no tool round trip");
  const reasons = vectors.messages.map((vector) => vector.message.Response?.body?.Generated?.finish_reason).filter((r) => r !== undefined);
  assert.deepEqual([...new Set(reasons)].sort(), [...FINISH_REASONS].sort(), `finish reasons: ${reasons}`);
});

test("every varint vector decodes to its value (number when safe, bigint beyond) and back", () => {
  for (const { type, value, body } of vectors.varints) {
    const reader = new Reader(unhex(body));
    const decoded = type === "u64" ? reader.u64("v") : type === "i64" ? reader.i64("v") : reader.u32("v");
    reader.end();
    const big = BigInt(value);
    assert.equal(BigInt(decoded), big, `${type} ${value}`);
    const safe = big <= BigInt(Number.MAX_SAFE_INTEGER) && big >= -BigInt(Number.MAX_SAFE_INTEGER);
    assert.equal(typeof decoded, safe ? "number" : "bigint", `${type} ${value}: representation`);
    for (const input of safe ? [decoded, big] : [decoded]) {
      const writer = new Writer();
      if (type === "u64") writer.u64(input, "v");
      else if (type === "i64") writer.i64(input, "v");
      else writer.u32(Number(input), "v");
      assert.equal(hex(writer.bytes()), body, `${type} ${value}: encoded from ${typeof input}`);
    }
  }
});

test("every invalid body is refused with a ProtocolError", () => {
  for (const vector of vectors.invalid) {
    const decode = vector.direction === "client" ? decodeClientMessage : decodeServerMessage;
    assert.throws(() => decode(unhex(vector.body)), ProtocolError, `${vector.name}: ${vector.why}`);
  }
});
