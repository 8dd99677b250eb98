// Framing and codec details the conformance vectors do not cover: the frame-length check
// before buffering, frames split and merged across chunks, values that cannot be encoded,
// PROTOCOL.md's own example, and the socket path's precedence.
import assert from "node:assert/strict";
import { chownSync, existsSync, lchownSync, mkdirSync, rmSync, symlinkSync } from "node:fs";
import { test } from "node:test";

import {
  DEFAULT_PARAMS,
  FrameDecoder,
  HANDSHAKE_MAX_FRAME_LEN,
  InvalidArgumentError,
  ProtocolError,
  SYSTEM_SOCKET_PATH,
  TooLargeError,
  Writer,
  decodeServerMessage,
  defaultSocketPath,
  encodeClientMessage,
  encodeFrame,
  encodeServerMessage,
  resolveSocketPath,
} from "../dist/index.js";
import { tempDir } from "./helpers.mjs";

const hex = (bytes) => Buffer.from(bytes).toString("hex");

test("PROTOCOL.md §8: the Hello and Ping frames, byte for byte", () => {
  const hello = { type: "Hello", protocol_version: 7, client_name: "ab", pid: 300, max_frame_len: 16 * 1024 * 1024 };
  assert.equal(hex(encodeFrame(hello, HANDSHAKE_MAX_FRAME_LEN)), "0000000d0007026162fb2c01fc00000001");
  assert.equal(hex(encodeFrame({ type: "Request", id: 5, body: { type: "Ping" } }, 1024)), "00000003010500");
  assert.deepEqual(decodeServerMessage(Uint8Array.from([0x01, 0x05, 0x00])), {
    type: "Response",
    id: 5,
    body: { type: "Pong" },
  });
});

test("a frame over the maximum is refused from its prefix, before its body is buffered", () => {
  const decoder = new FrameDecoder(HANDSHAKE_MAX_FRAME_LEN);
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(HANDSHAKE_MAX_FRAME_LEN + 1);
  assert.throws(() => decoder.push(prefix), ProtocolError);
  // Exactly the maximum is fine (and waits for its body).
  const ok = new FrameDecoder(HANDSHAKE_MAX_FRAME_LEN);
  prefix.writeUInt32BE(HANDSHAKE_MAX_FRAME_LEN);
  assert.deepEqual(ok.push(prefix), []);
  assert.equal(ok.pendingBytes, 4);
});

test("frames split across chunks and merged into one chunk all come out whole", () => {
  const bodies = [
    encodeServerMessage({ type: "Response", id: 1, body: { type: "Pong" } }),
    encodeServerMessage({ type: "Response", id: 2, body: { type: "Text", value: "héllo ".repeat(50) } }),
    encodeServerMessage({ type: "Event", id: 3, event: { type: "Token", text: "", token: null } }),
  ];
  const stream = Buffer.concat(
    bodies.flatMap((body) => {
      const prefix = Buffer.alloc(4);
      prefix.writeUInt32BE(body.length);
      return [prefix, body];
    }),
  );
  for (const step of [1, 3, 7, stream.length]) {
    const decoder = new FrameDecoder(1 << 20);
    const out = [];
    for (let i = 0; i < stream.length; i += step) out.push(...decoder.push(stream.subarray(i, i + step)));
    assert.deepEqual(out.map(hex), bodies.map(hex), `chunks of ${step}`);
    assert.equal(decoder.pendingBytes, 0);
  }
});

test("a request frame over the daemon's maximum is refused locally with TooLargeError", () => {
  const body = { type: "Embed", model: { type: "Name", value: "m" }, texts: ["x".repeat(2000)], normalize: true, priority: "Interactive", deadline_ms: null };
  assert.throws(() => encodeFrame({ type: "Request", id: 1, body }, 1000), TooLargeError);
});

test("values that cannot be encoded are InvalidArgumentErrors", () => {
  const request = (body) => ({ type: "Request", id: 1, body });
  const bad = [
    request({ type: "Nope" }),
    request({ type: "Load", model: 7 }),
    request({ type: "Unload", model: "m", force: "yes" }),
    request({ type: "Release", lease: -1 }),
    request({ type: "Release", lease: 2 ** 53 }), // unsafe as a number: pass a bigint
    request({ type: "Release", lease: 2n ** 64n }),
    request({ type: "Detokenize", model: { type: "Name", value: "m" }, tokens: [1.5] }),
    request({ type: "Tokenize", model: { type: "Nope" }, text: "", add_special_tokens: true }),
    request({ type: "Lease", model: "m", keep_alive_ms: 2n ** 63n }),
    { type: "Credit", id: 1, events: 2 ** 32 },
    { type: "Hello", protocol_version: 3, client_name: "\udc00", pid: 1, max_frame_len: 1 },
  ];
  for (const message of bad) {
    assert.throws(() => encodeClientMessage(message), InvalidArgumentError, JSON.stringify(message, (_, v) => (typeof v === "bigint" ? `${v}n` : v)));
  }
  // f32 fields: NaN, ±Infinity and finite values beyond the f32 range are refused
  // (setFloat32 would send ±Infinity); the largest f32 itself is fine.
  const generate = (temperature) =>
    request({
      type: "Generate",
      model: { type: "Name", value: "m" },
      input: { type: "Raw", value: "x" },
      params: { max_tokens: 1, temperature, top_p: 1, top_k: 0, min_p: 0, repetition_penalty: 1, seed: null, stop: [], tools: [], tool_choice: { type: "Auto" }, parallel_tool_calls: true },
      initial_credit: 1,
      priority: "Interactive",
      deadline_ms: null,
    });
  for (const temperature of [1e39, -1e39, Infinity, -Infinity, NaN, Number.MAX_VALUE]) {
    assert.throws(() => encodeClientMessage(generate(temperature)), InvalidArgumentError, String(temperature));
  }
  encodeClientMessage(generate(3.4028234663852886e38));
  // DEFAULT_PARAMS and stop strings make whole params (since v7: no tools, Auto, parallel calls).
  const defaults = generate(0);
  defaults.body.params = { ...DEFAULT_PARAMS, stop: [] };
  assert.ok(hex(encodeClientMessage(defaults)).endsWith("00" + "00" + "00" + "000001" + "010000"));
  // Constraints (since v6): a known variant, with a string where it carries one.
  const constrained = (constraint) => {
    const message = generate(0);
    message.body.params.constraint = constraint;
    return message;
  };
  for (const constraint of [{ type: "Xml" }, { type: "Regex" }, { type: "Lark", value: 5 }, { type: "JsonSchema", value: { type: "object" } }, "JsonObject"]) {
    assert.throws(() => encodeClientMessage(constrained(constraint)), InvalidArgumentError, JSON.stringify(constraint));
  }
  // ... logprobs None, constraint Some(Regex("y|n")) (1, tag 2, 3 bytes), no tools, Auto,
  // parallel calls, credit 1, Interactive, no deadline.
  assert.ok(hex(encodeClientMessage(constrained({ type: "Regex", value: "y|n" }))).endsWith("00" + "010203797c6e" + "000001" + "010000"));
  // Tools (since v7): a known tool choice, with its name where it carries one; tools and
  // tool calls of strings; parallel_tool_calls a boolean.
  const withTools = (change) => {
    const message = generate(0);
    change(message.body);
    return message;
  };
  for (const [what, change] of [
    ["choice Any", (b) => (b.params.tool_choice = { type: "Any" })],
    ["choice Function without a name", (b) => (b.params.tool_choice = { type: "Function" })],
    ["choice as a string", (b) => (b.params.tool_choice = "Auto")],
    ["tools not an array", (b) => (b.params.tools = { name: "f" })],
    ["a tool's parameters an object", (b) => (b.params.tools = [{ name: "f", description: "", parameters: {} }])],
    ["parallel_tool_calls missing", (b) => delete b.params.parallel_tool_calls],
    ["a call's arguments an object", (b) => (b.input = { type: "Chat", value: [{ role: "assistant", content: "", tool_calls: [{ id: "c", name: "f", arguments: {} }], tool_call_id: null, name: null }] })],
  ]) {
    assert.throws(() => encodeClientMessage(withTools(change)), InvalidArgumentError, what);
  }
  // ... constraint None, tools [f "" "{}"], Function("f"), no parallel calls, credit 1, ...
  const oneTool = withTools((b) => Object.assign(b.params, { tools: [{ name: "f", description: "", parameters: "{}" }], tool_choice: { type: "Function", value: "f" }, parallel_tool_calls: false }));
  assert.ok(hex(encodeClientMessage(oneTool)).endsWith("00" + "01" + "0166" + "00" + "027b7d" + "03" + "0166" + "00" + "010000"));
  const f32 = new Writer();
  assert.throws(() => f32.f32(1e39, "v"), /not a finite f32/);
  f32.f32(-0.5, "v");
  assert.equal(hex(f32.bytes()), "000000bf");
  // Bigints beyond 2^53 are fine where the field is 64-bit.
  assert.equal(hex(encodeClientMessage(request({ type: "Release", lease: 2n ** 64n - 1n }))), "010104fdffffffffffffffff");
  const writer = new Writer();
  writer.i64(-(2n ** 63n), "v");
  assert.equal(hex(writer.bytes()), "fdffffffffffffffff");
});

test("strings keep a leading BOM and refuse malformed UTF-8", () => {
  const text = encodeServerMessage({ type: "Response", id: 1, body: { type: "Text", value: "\ufeffbom" } });
  assert.equal(decodeServerMessage(text).body.value, "\ufeffbom");
  // "Text" of 2 bytes: an overlong encoding of '/'.
  assert.throws(() => decodeServerMessage(Uint8Array.from([0x01, 0x01, 0x08, 0x02, 0xc0, 0xaf])), ProtocolError);
});

test("the socket path: $MLXD_SOCKET, then $XDG_RUNTIME_DIR (if absolute), then /tmp/mlxd-$UID", () => {
  assert.equal(defaultSocketPath({ MLXD_SOCKET: "/x/y.sock", XDG_RUNTIME_DIR: "/run/user/7" }, 7), "/x/y.sock");
  assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: "/run/user/7" }, 7), "/run/user/7/mlxd/mlxd.sock");
  assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: "run" }, 7), "/tmp/mlxd-7/mlxd.sock");
  assert.equal(defaultSocketPath({ MLXD_SOCKET: "" }, 7), "/tmp/mlxd-7/mlxd.sock");
  assert.deepEqual(resolveSocketPath({ MLXD_SOCKET: "/x/y.sock" }, 7), { path: "/x/y.sock", explicit: true, passedOver: [] });
  // Nothing at any default: the per-user default, so the error names where to start a daemon.
  if (!existsSync(SYSTEM_SOCKET_PATH)) {
    const none = resolveSocketPath({ XDG_RUNTIME_DIR: "/nonexistent-xdg" }, 7);
    assert.equal(none.path, "/nonexistent-xdg/mlxd/mlxd.sock");
  }
});

test("a default socket in someone else's directory is passed over; an explicit one never is", { skip: process.getuid() !== 0 && "needs root to chown" }, () => {
  const dir = tempDir();
  try {
    mkdirSync(`${dir}/mlxd`);
    chownSync(`${dir}/mlxd`, 4242, 4242);
    const choice = resolveSocketPath({ XDG_RUNTIME_DIR: dir }, 7);
    assert.deepEqual(choice.passedOver, [{ path: `${dir}/mlxd/mlxd.sock`, directoryOwner: 4242 }]);
    assert.equal(choice.path, SYSTEM_SOCKET_PATH);
    const explicit = resolveSocketPath({ MLXD_SOCKET: `${dir}/mlxd/mlxd.sock` }, 7);
    assert.deepEqual(explicit, { path: `${dir}/mlxd/mlxd.sock`, explicit: true, passedOver: [] });
    // A link in place of the directory is judged by the link's owner, not its target's.
    mkdirSync(`${dir}/ours`);
    mkdirSync(`${dir}/linked`);
    symlinkSync(`${dir}/ours`, `${dir}/linked/mlxd`);
    lchownSync(`${dir}/linked/mlxd`, 4242, 4242);
    const linked = resolveSocketPath({ XDG_RUNTIME_DIR: `${dir}/linked` }, 7);
    assert.deepEqual(linked.passedOver, [{ path: `${dir}/linked/mlxd/mlxd.sock`, directoryOwner: 4242 }]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
