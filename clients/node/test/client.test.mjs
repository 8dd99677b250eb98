// Client behaviour against a scripted daemon (test/fake-daemon.mjs): the retry policy and
// its validation, a fatal Busy, a Generation's summary without a reader, concurrent
// next(), complete(), the error classes' names, the exact requests rerank, embedding
// prompts, logprobs, constraints and tools send, tokens with and without logprobs, and tool
// calls in the stream (no credit).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BusyError,
  CancelledError,
  DEFAULT_RETRY,
  InvalidArgumentError,
  NO_RETRY,
  RequestCancelledError,
  RequestTimeoutError,
  TimeoutError,
  connect,
  fromWire,
  retryPolicy,
} from "../dist/index.js";
import { creditedGenerator, fakeDaemon } from "./fake-daemon.mjs";
import { TEST_TIMEOUT } from "./helpers.mjs";

/** Rejects with `message` if `promise` has not settled within `ms`. */
function within(ms, promise, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The v7 fields of params without tools, and of a message without tool calls, as sent. */
const NO_TOOLS = { tools: [], tool_choice: { type: "Auto" }, parallel_tool_calls: true };
const PLAIN = { tool_calls: [], tool_call_id: null, name: null };

const busy = (retryAfterMs) => ({ code: "Busy", message: "queue full", retry_after_ms: retryAfterMs });

test("a retry option fills fields left undefined with the defaults and refuses bad ones", async () => {
  assert.deepEqual(retryPolicy(undefined), DEFAULT_RETRY);
  assert.deepEqual(retryPolicy(true), DEFAULT_RETRY);
  assert.equal(retryPolicy(false), NO_RETRY);
  assert.deepEqual(retryPolicy({ maxRetries: undefined }), { maxRetries: 3, maxWaitMs: 2000 });
  assert.deepEqual(retryPolicy({ maxWaitMs: undefined, maxRetries: 0 }), { maxRetries: 0, maxWaitMs: 2000 });
  for (const bad of [{ maxRetries: -1 }, { maxRetries: 1.5 }, { maxRetries: Infinity }, { maxRetries: NaN }, { maxWaitMs: "10" }, { maxWaitMs: -5 }, 3, null]) {
    assert.throws(() => retryPolicy(bad), InvalidArgumentError, JSON.stringify(bad));
  }
  // Refused before anything is connected (not a NoDaemonError for the missing socket).
  await assert.rejects(
    connect({ socket: "/nonexistent/mlxd.sock", fallback: false, retry: { maxRetries: Infinity } }),
    InvalidArgumentError,
  );
});

test("retry: { maxRetries: undefined } retries Busy three times, not forever", { timeout: TEST_TIMEOUT }, async () => {
  const daemon = await fakeDaemon((message, send) => {
    if (message.type === "Request") send({ type: "Error", id: message.id, error: busy(1) });
  });
  const client = await connect({ socket: daemon.path, fallback: false, retry: { maxRetries: undefined, maxWaitMs: 5 } });
  try {
    const err = await within(5000, client.ping().catch((e) => e), "Busy was retried without end");
    assert.ok(err instanceof BusyError, String(err));
    assert.equal(daemon.received.length, 1 + 3);
  } finally {
    await client.close();
    await daemon.close();
  }
});

test("a fatal Busy (the session ended) is not retried", { timeout: TEST_TIMEOUT }, async () => {
  const daemon = await fakeDaemon((message, send) => {
    if (message.type !== "Request") return;
    send({ type: "Fatal", ...busy(60_000) });
    send.close();
  });
  // Retrying would wait up to a minute per try, for a session that is over.
  const client = await connect({ socket: daemon.path, fallback: false, retry: { maxRetries: 3, maxWaitMs: 60_000 } });
  try {
    const err = await within(2000, client.ping().catch((e) => e), "the fatal Busy was retried");
    assert.ok(err instanceof BusyError, String(err));
    assert.equal(err.fatal, true);
    assert.equal(client.closed, true);
  } finally {
    await client.close();
    await daemon.close();
  }
});

test("awaiting summary with nobody reading lets the stream finish; the tokens stay readable", { timeout: TEST_TIMEOUT }, async () => {
  const generator = creditedGenerator();
  const daemon = await fakeDaemon(generator.onMessage);
  const client = await connect({ socket: daemon.path, fallback: false });
  try {
    const generation = client.generate("m", "x", { max_tokens: 20 }, { window: 2 });
    const summary = await within(3000, generation.summary, "summary waited for a reader (no credit was granted)");
    assert.equal(summary.completion_tokens, 20);
    assert.equal(generation.buffered, 20);
    const texts = [];
    for await (const token of generation) texts.push(token.text);
    assert.deepEqual(texts, Array.from({ length: 20 }, (_, i) => `t${i}`));
    // Credit for the 18 tokens beyond the window, each granted once.
    assert.equal(generator.credits.reduce((a, b) => a + b, 0), 18);

    // complete(): text, ids and summary in one.
    const whole = await within(3000, client.generate("m", "x", { max_tokens: 5 }, { window: 2 }).complete(), "complete() hung");
    assert.equal(whole.text, "t0t1t2t3t4");
    assert.deepEqual(whole.tokens, [0, 1, 2, 3, 4]);
    assert.equal(whole.summary.finish_reason, "Length");
  } finally {
    await client.close();
    await daemon.close();
  }
});

test("concurrent next() calls on one Generation each get the next token, in call order", { timeout: TEST_TIMEOUT }, async () => {
  const generator = creditedGenerator();
  const daemon = await fakeDaemon(generator.onMessage);
  const client = await connect({ socket: daemon.path, fallback: false });
  try {
    const generation = client.generate("m", "x", { max_tokens: 3 }, { window: 4 });
    const iterator = generation[Symbol.asyncIterator]();
    // Both wait: no token has arrived yet.
    const results = await within(3000, Promise.all([iterator.next(), iterator.next(), iterator.next(), iterator.next()]), "a waiting next() was never woken");
    assert.deepEqual(
      results.map((r) => (r.done ? "done" : r.value.text)),
      ["t0", "t1", "t2", "done"],
    );
  } finally {
    await client.close();
    await daemon.close();
  }
});

test("Timeout and Cancelled have names apart from DOMException's; the old names are the same classes", () => {
  assert.equal(TimeoutError, RequestTimeoutError);
  assert.equal(CancelledError, RequestCancelledError);
  const timeout = fromWire({ code: "Timeout", message: "deadline passed", retry_after_ms: null });
  assert.ok(timeout instanceof RequestTimeoutError && timeout instanceof TimeoutError);
  assert.equal(timeout.name, "RequestTimeoutError");
  assert.notEqual(timeout.name, new DOMException("x", "TimeoutError").name);
  const cancelled = fromWire({ code: "Cancelled", message: "cancelled", retry_after_ms: null });
  assert.ok(cancelled instanceof RequestCancelledError && cancelled instanceof CancelledError);
  assert.equal(cancelled.name, "RequestCancelledError");
});

/**
 * A ModelInfo as the daemon sends it (v4: with prompts, default_prompt, estimated_bytes; v7:
 * tools, here true for a generation model).
 */
function modelInfo(name, kind, prompts = [], defaultPrompt = null) {
  return {
    name,
    kind,
    state: "Ready",
    source: `/models/${name}`,
    leases: 1,
    in_flight: 0,
    queue_depth: 0,
    queue_capacity: 64,
    resident_bytes: 1 << 20,
    dim: 0,
    max_seq_len: 512,
    idle_ms: null,
    keep_alive_left_ms: null,
    backend: "cpu",
    worker_pid: 4242,
    last_error: null,
    sched: { queued: 0, running: 0, slots: 1, admitted: 0, busy: 0, shed: 0, timeouts: 0, single_stream: 0, batches: 0, batched_requests: 0, service_us: 0 },
    prompts,
    default_prompt: defaultPrompt,
    estimated_bytes: 3 << 20,
    tools: kind === "Generation",
  };
}

test("rerank and embedding prompts send what they say; a Busy rerank is retried like embed", { timeout: TEST_TIMEOUT }, async () => {
  const results = [
    { index: 2, score: 0.75 },
    { index: 0, score: 0.25 },
  ];
  let busyOnce = true;
  const daemon = await fakeDaemon((message, send) => {
    if (message.type !== "Request") return;
    const { id, body } = message;
    const respond = (answer) => send({ type: "Response", id, body: answer });
    if (body.type === "Rerank") {
      if (busyOnce) {
        busyOnce = false;
        send({ type: "Error", id, error: busy(1) });
      } else {
        respond({ type: "Reranked", model: "r", results: body.documents.length === 1 ? [{ index: 0, score: 0.5 }] : results, prompt_tokens: 12 });
      }
    } else if (body.type === "Embed") {
      respond({ type: "Embeddings", model: "e", count: 1, dim: 2, vectors: Float32Array.of(1, 0), prompt_tokens: 3 });
    } else if (body.type === "Lease") {
      const info = body.model === "r" ? modelInfo("r", "Rerank") : modelInfo("e", "Embedding", ["document", "query"], "query");
      respond({ type: "Leased", lease: body.model === "r" ? 7 : 8, model: info });
    } else if (body.type === "Release") {
      respond({ type: "Released" });
    }
  });
  const client = await connect({ socket: daemon.path, fallback: false, retry: { maxRetries: 1, maxWaitMs: 5 } });
  try {
    const answer = await client.rerank("r", "q", ["a", "b", "c"], { topN: 2, priority: "Batch", deadlineMs: 500 });
    assert.deepEqual(answer, { model: "r", results, prompt_tokens: 12 });
    const reranker = await client.lease("r");
    assert.equal(reranker.info.kind, "Rerank");
    assert.deepEqual((await reranker.rerank("q", ["only"])).results, [{ index: 0, score: 0.5 }]);
    await reranker.close();
    // Refused before anything is sent.
    await assert.rejects(client.rerank("r", "q", "not an array"), InvalidArgumentError);
    await assert.rejects(client.rerank("r", "q", ["a"], { topN: -1 }), InvalidArgumentError);

    assert.deepEqual(await client.embed("e", ["x"], { prompt: "query" }), [Float32Array.of(1, 0)]);
    assert.equal((await client.embedDetailed("e", ["x"], { prompt: "" })).prompt_tokens, 3);
    await client.embed("e", ["x"]);
    const embedder = await client.lease("e");
    assert.deepEqual(
      [embedder.info.prompts, embedder.info.default_prompt, embedder.info.estimated_bytes, embedder.info.tools],
      [["document", "query"], "query", 3 << 20, false],
    );
    await embedder.embed(["x"], { normalize: false, prompt: "document" });
    await embedder.close();

    const rerank = { type: "Rerank", model: { type: "Name", value: "r" }, query: "q", documents: ["a", "b", "c"], top_n: 2, priority: "Batch", deadline_ms: 500 };
    const embed = (model, prompt, normalize = true) => ({ type: "Embed", model, texts: ["x"], normalize, priority: "Interactive", deadline_ms: null, prompt });
    const byName = { type: "Name", value: "e" };
    assert.deepEqual(
      daemon.received.map((m) => m.body),
      [
        rerank,
        rerank,
        { type: "Lease", model: "r", keep_alive_ms: null },
        { type: "Rerank", model: { type: "Lease", value: 7 }, query: "q", documents: ["only"], top_n: null, priority: "Interactive", deadline_ms: null },
        { type: "Release", lease: 7 },
        embed(byName, "query"),
        embed(byName, ""),
        embed(byName, null),
        { type: "Lease", model: "e", keep_alive_ms: null },
        embed({ type: "Lease", value: 8 }, "document", false),
        { type: "Release", lease: 8 },
      ],
    );
  } finally {
    await client.close();
    await daemon.close();
  }
});

test("logprobs are sent as asked, and each token surfaces its own or null", { timeout: TEST_TIMEOUT }, async () => {
  const paris = {
    text: " Paris",
    logprob: -0.015625,
    top: [
      { token: 7042, text: " Paris", logprob: -0.015625 },
      { token: 17, text: "\ufffd", logprob: -4.5 },
    ],
  };
  const alone = { text: "!", logprob: 0, top: [] };
  const daemon = await fakeDaemon((message, send) => {
    if (message.type !== "Request") return;
    const { id, body } = message;
    const respond = (answer) => send({ type: "Response", id, body: answer });
    if (body.type === "Generate") {
      const token = (text, tokenId, logprobs) => send({ type: "Event", id, event: { type: "Token", text, token: tokenId, logprobs } });
      if (body.params.logprobs === 3) {
        token(" Paris", 7042, paris);
        token("é", null, null); // the end-of-stream flush: never any
      } else if (body.params.logprobs === 0) {
        token("!", 0, alone);
      } else {
        token("Hello", 5, null);
      }
      respond({ type: "Generated", finish_reason: "Length", prompt_tokens: 3, completion_tokens: 2, prompt_tokens_per_s: 10, generation_tokens_per_s: 20, cached_prompt_tokens: 0 });
    } else if (body.type === "Lease") {
      respond({ type: "Leased", lease: 9, model: modelInfo("g", "Generation") });
    } else if (body.type === "Release") {
      respond({ type: "Released" });
    }
  });
  const client = await connect({ socket: daemon.path, fallback: false });
  try {
    const tokens = [];
    for await (const token of client.generate("g", "Hi", { max_tokens: 2, temperature: 0, logprobs: 3 })) tokens.push(token);
    assert.deepEqual(tokens, [
      { type: "token", text: " Paris", token: 7042, logprobs: paris },
      { type: "token", text: "é", token: null, logprobs: null },
    ]);
    const plain = await client.chat("g", [{ role: "user", content: "Hi" }], { max_tokens: 2, temperature: 0 }).complete();
    assert.deepEqual([plain.text, plain.tokens, plain.logprobs], ["Hello", [5], []]);
    const lease = await client.lease("g");
    const leased = await lease.generate("Hi", { max_tokens: 1, temperature: 0, logprobs: 0 }).complete();
    assert.deepEqual([leased.text, leased.tokens, leased.logprobs], ["!", [0], [alone]]);
    await lease.close();
    // A negative count cannot be encoded: refused before anything is sent.
    await assert.rejects(client.generate("g", "Hi", { logprobs: -1 }).complete(), InvalidArgumentError);

    const params = (logprobs, max_tokens) => ({ max_tokens, temperature: 0, top_p: 1, top_k: 0, min_p: 0, repetition_penalty: 1, seed: null, stop: [], logprobs, constraint: null, ...NO_TOOLS });
    const generate = (model, input, p) => ({ type: "Generate", model, input, params: p, initial_credit: 32, priority: "Interactive", deadline_ms: null });
    assert.deepEqual(
      daemon.received.map((m) => m.body),
      [
        generate({ type: "Name", value: "g" }, { type: "Raw", value: "Hi" }, params(3, 2)),
        generate({ type: "Name", value: "g" }, { type: "Chat", value: [{ role: "user", content: "Hi", ...PLAIN }] }, params(null, 2)),
        { type: "Lease", model: "g", keep_alive_ms: null },
        generate({ type: "Lease", value: 9 }, { type: "Raw", value: "Hi" }, params(0, 1)),
        { type: "Release", lease: 9 },
      ],
    );
  } finally {
    await client.close();
    await daemon.close();
  }
});

test("each kind of constraint reaches the wire; an object schema as its JSON text, a string as is", { timeout: TEST_TIMEOUT }, async () => {
  const schema = { type: "object", properties: { answer: { type: "boolean" } }, required: ["answer"] };
  const schemaText = '{"type":"object","properties":{"answer":{"type":"boolean"}},"required":["answer"]}';
  const asGiven = '{ "type": "array",  "items": {"type": "integer"} }';
  const answers = { JsonSchema: '{"answer":true}', JsonObject: "{}", Regex: "555-0199", Lark: "yes" };
  const daemon = await fakeDaemon((message, send) => {
    if (message.type !== "Request") return;
    const { id, body } = message;
    const respond = (answer) => send({ type: "Response", id, body: answer });
    if (body.type === "Generate") {
      const text = body.params.constraint?.value === asGiven ? "[1]" : answers[body.params.constraint?.type] ?? "free";
      send({ type: "Event", id, event: { type: "Token", text, token: 42, logprobs: null } });
      respond({ type: "Generated", finish_reason: "Stop", prompt_tokens: 3, completion_tokens: 1, prompt_tokens_per_s: 10, generation_tokens_per_s: 20, cached_prompt_tokens: 0 });
    } else if (body.type === "Lease") {
      respond({ type: "Leased", lease: 9, model: modelInfo("g", "Generation") });
    } else if (body.type === "Release") {
      respond({ type: "Released" });
    }
  });
  const client = await connect({ socket: daemon.path, fallback: false });
  const chat = [{ role: "user", content: "Hi" }];
  try {
    const sky = await client.generate("g", "Hi", { max_tokens: 8, temperature: 0, constraint: { jsonSchema: schema } }).complete();
    assert.deepEqual(JSON.parse(sky.text), { answer: true });
    assert.equal(sky.summary.finish_reason, "Stop");
    assert.equal(await client.chat("g", chat, { max_tokens: 8, temperature: 0, constraint: { jsonSchema: asGiven } }).text(), "[1]");
    assert.equal(await client.generate("g", "Hi", { max_tokens: 8, temperature: 0, constraint: { jsonObject: true } }).text(), "{}");
    const lease = await client.lease("g");
    assert.equal(await lease.generate("Hi", { max_tokens: 8, temperature: 0, constraint: { regex: "\\d{3}-\\d{4}" } }).text(), "555-0199");
    assert.equal(await lease.chat(chat, { max_tokens: 8, temperature: 0, constraint: { lark: 'start: "yes" | "no"' } }).text(), "yes");
    await lease.close();
    // null and undefined are no constraint.
    assert.equal(await client.generate("g", "Hi", { max_tokens: 8, temperature: 0, constraint: null }).text(), "free");
    // Refused before anything is sent: no key, two keys, a key of the wrong type, an unknown key.
    for (const bad of [{}, { regex: "a", lark: "b" }, { regex: 5 }, { jsonObject: false }, { jsonSchema: 3 }, { jsonSchema: null }, { grammar: "x" }, "json"]) {
      await assert.rejects(client.generate("g", "Hi", { constraint: bad }).complete(), InvalidArgumentError, JSON.stringify(bad));
    }

    const params = (constraint) => ({ max_tokens: 8, temperature: 0, top_p: 1, top_k: 0, min_p: 0, repetition_penalty: 1, seed: null, stop: [], logprobs: null, constraint, ...NO_TOOLS });
    const generate = (model, input, constraint) => ({ type: "Generate", model, input, params: params(constraint), initial_credit: 32, priority: "Interactive", deadline_ms: null });
    const [byName, byLease, raw, chatInput] = [{ type: "Name", value: "g" }, { type: "Lease", value: 9 }, { type: "Raw", value: "Hi" }, { type: "Chat", value: chat.map((m) => ({ ...m, ...PLAIN })) }];
    assert.deepEqual(
      daemon.received.map((m) => m.body),
      [
        generate(byName, raw, { type: "JsonSchema", value: schemaText }),
        generate(byName, chatInput, { type: "JsonSchema", value: asGiven }),
        generate(byName, raw, { type: "JsonObject" }),
        { type: "Lease", model: "g", keep_alive_ms: null },
        generate(byLease, raw, { type: "Regex", value: "\\d{3}-\\d{4}" }),
        generate(byLease, chatInput, { type: "Lark", value: 'start: "yes" | "no"' }),
        { type: "Release", lease: 9 },
        generate(byName, raw, null),
      ],
    );
    // On the wire: Some (1), JsonSchema (tag 0), the text's length, the JSON text itself.
    const text = Buffer.from(schemaText);
    assert.ok(Buffer.from(daemon.bodies[0]).includes(Buffer.concat([Buffer.from([1, 0, text.length]), text])));
    assert.deepEqual(JSON.parse(schemaText), schema);
    // JsonObject: Some (1), tag 1 and nothing more; then no tools, Auto, parallel calls
    // (since v7), credit 32, Interactive, no deadline.
    assert.ok(Buffer.from(daemon.bodies[2]).subarray(-8).equals(Buffer.from([1, 1, 0, 0, 1, 32, 0, 0])));
  } finally {
    await client.close();
    await daemon.close();
  }
});

const WEATHER = { type: "object", properties: { city: { type: "string" } }, required: ["city"] };
const WEATHER_TEXT = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}';

test("tools, tool choices and messages with tool calls reach the wire exactly; malformed ones are refused before sending", { timeout: TEST_TIMEOUT }, async () => {
  const daemon = await fakeDaemon((message, send) => {
    if (message.type !== "Request") return;
    const { id, body } = message;
    const respond = (answer) => send({ type: "Response", id, body: answer });
    if (body.type === "Generate") {
      respond({ type: "Generated", finish_reason: "Stop", prompt_tokens: 3, completion_tokens: 0, prompt_tokens_per_s: 10, generation_tokens_per_s: 20, cached_prompt_tokens: 0 });
    } else if (body.type === "Lease") {
      respond({ type: "Leased", lease: 9, model: modelInfo("g", "Generation") });
    } else if (body.type === "Release") {
      respond({ type: "Released" });
    }
  });
  const client = await connect({ socket: daemon.path, fallback: false });
  const user = { role: "user", content: "Weather in Oslo?" };
  const tools = [
    { name: "get_weather", description: "The weather in a city now.", parameters: WEATHER },
    { type: "function", function: { name: "get_time", parameters: '{"type":"object"}' } }, // OpenAI's shape, JSON text
  ];
  try {
    // The round trip: the assistant's call (as the stream gave it, but arguments as an object;
    // content left out) and the tool's answer.
    const history = [
      user,
      { role: "assistant", toolCalls: [{ type: "toolCall", id: "call_1", name: "get_weather", arguments: { city: "Oslo" } }] },
      { role: "tool", content: '{"celsius":-3}', toolCallId: "call_1", name: "get_weather" },
    ];
    await client.chat("g", history, { max_tokens: 8, temperature: 0, tools, toolChoice: { function: "get_weather" }, parallelToolCalls: false }).complete();
    await client.chat("g", [user], { max_tokens: 8, temperature: 0, tools, toolChoice: "none" }).complete();
    await client.chat("g", [user], { max_tokens: 8, temperature: 0, tools, toolChoice: "required" }).complete();
    // OpenAI's spellings: tool_choice, parallel_tool_calls, and messages as OpenAI returns them.
    const lease = await client.lease("g");
    assert.equal(lease.info.tools, true);
    const openai = [
      user,
      { role: "assistant", content: null, tool_calls: [{ id: "call_2", type: "function", function: { name: "get_time", arguments: "{}" } }] },
      { role: "tool", content: "12:00", tool_call_id: "call_2" },
    ];
    await lease.chat(openai, { max_tokens: 8, temperature: 0, tools, tool_choice: { type: "function", function: { name: "get_time" } }, parallel_tool_calls: true }).complete();
    await lease.close();
    const sent = daemon.received.length;

    // Refused before anything is sent.
    const bad = [
      [{ tools: {} }, "tools not an array"],
      [{ tools: [{ description: "x", parameters: WEATHER }] }, "a tool without a name"],
      [{ tools: [{ name: "f" }] }, "a tool without parameters"],
      [{ tools: [{ name: "f", parameters: 3 }] }, "parameters neither an object nor text"],
      [{ tools: [{ name: "f", parameters: WEATHER, description: 5 }] }, "a description not a string"],
      [{ tools: [{ type: "tool", function: { name: "f", parameters: WEATHER } }] }, "a type other than function"],
      [{ tools, toolChoice: "any" }, "an unknown choice"],
      [{ tools, toolChoice: { function: 5 } }, "a function without a name"],
      [{ tools, toolChoice: "auto", tool_choice: "none" }, "both spellings"],
      [{ tools, parallelToolCalls: "yes" }, "parallelToolCalls not a boolean"],
    ];
    for (const [params, why] of bad) {
      await assert.rejects(client.chat("g", [user], params).complete(), InvalidArgumentError, why);
    }
    const badMessages = [
      [[{ role: "assistant", content: "", toolCalls: {} }], "toolCalls not an array"],
      [[{ role: "assistant", toolCalls: [{ name: "f", arguments: "{}" }] }], "a call without an id"],
      [[{ role: "assistant", toolCalls: [{ id: "c", name: "f", arguments: 5 }] }], "arguments neither an object nor text"],
      [[{ role: "assistant", toolCalls: [{ id: "c", name: "f", arguments: "{}" }], tool_calls: [] }], "both spellings"],
      [[{ role: "tool", content: "1", toolCallId: 7 }], "toolCallId not a string"],
      [[{ role: "user" }], "no content and no tool calls"],
      [[{ role: "user", content: "Hi", name: 3 }], "a name not a string"],
    ];
    for (const [messages, why] of badMessages) {
      await assert.rejects(client.chat("g", messages, {}).complete(), InvalidArgumentError, why);
    }
    assert.equal(daemon.received.length, sent, "nothing was sent for the refused ones");

    const getWeather = { name: "get_weather", description: "The weather in a city now.", parameters: WEATHER_TEXT };
    const getTime = { name: "get_time", description: "", parameters: '{"type":"object"}' };
    const params = (tool_choice, parallel_tool_calls = true) => ({
      max_tokens: 8, temperature: 0, top_p: 1, top_k: 0, min_p: 0, repetition_penalty: 1, seed: null, stop: [], logprobs: null, constraint: null,
      tools: [getWeather, getTime], tool_choice, parallel_tool_calls,
    });
    const generate = (model, messages, p) => ({ type: "Generate", model, input: { type: "Chat", value: messages }, params: p, initial_credit: 32, priority: "Interactive", deadline_ms: null });
    const [byName, byLease] = [{ type: "Name", value: "g" }, { type: "Lease", value: 9 }];
    const plainUser = { ...user, ...PLAIN };
    assert.deepEqual(
      daemon.received.map((m) => m.body),
      [
        generate(byName, [
          plainUser,
          { role: "assistant", content: "", tool_calls: [{ id: "call_1", name: "get_weather", arguments: '{"city":"Oslo"}' }], tool_call_id: null, name: null },
          { role: "tool", content: '{"celsius":-3}', tool_calls: [], tool_call_id: "call_1", name: "get_weather" },
        ], params({ type: "Function", value: "get_weather" }, false)),
        generate(byName, [plainUser], params({ type: "None" })),
        generate(byName, [plainUser], params({ type: "Required" })),
        { type: "Lease", model: "g", keep_alive_ms: null },
        generate(byLease, [
          plainUser,
          { role: "assistant", content: "", tool_calls: [{ id: "call_2", name: "get_time", arguments: "{}" }], tool_call_id: null, name: null },
          { role: "tool", content: "12:00", tool_calls: [], tool_call_id: "call_2", name: null },
        ], params({ type: "Function", value: "get_time" })),
        { type: "Release", lease: 9 },
      ],
    );
    // On the wire, the first request's params end: the two tools, Function (3) "get_weather",
    // no parallel calls (0); then credit 32, Interactive, no deadline.
    const tail = Buffer.concat([Buffer.from([3, 11]), Buffer.from("get_weather"), Buffer.from([0, 32, 0, 0])]);
    assert.ok(Buffer.from(daemon.bodies[0]).subarray(-tail.length).equals(tail));
  } finally {
    await client.close();
    await daemon.close();
  }
});

test("a ToolCall event comes in the stream after its token and in complete(), costs no credit, and the stream ends ToolCalls", { timeout: TEST_TIMEOUT }, async () => {
  const callA = { id: "call_a", name: "get_weather", arguments: '{"city":"Oslo"}' };
  const callB = { id: "call_b", name: "get_weather", arguments: '{"city":"Paris"}' };
  // Three tokens (the text, then one empty token per call) and two calls; a call is sent
  // right after its token whatever the credit left, as mlxd does.
  const script = [
    { type: "Token", text: "Checking.", token: 1, logprobs: null },
    { type: "Token", text: "", token: 2, logprobs: null },
    { type: "ToolCall", ...callA },
    { type: "Token", text: "", token: 3, logprobs: null },
    { type: "ToolCall", ...callB },
  ];
  const streams = new Map();
  const credits = [];
  const end = (stream, send) => {
    stream.done = true;
    send({ type: "Response", id: stream.id, body: { type: "Generated", finish_reason: "ToolCalls", prompt_tokens: 9, completion_tokens: 3, prompt_tokens_per_s: 1, generation_tokens_per_s: 1, cached_prompt_tokens: 0 } });
  };
  const pump = (stream, send) => {
    while (stream.next < script.length) {
      const event = script[stream.next];
      if (event.type === "Token") {
        if (stream.credit === 0) break;
        stream.credit -= 1;
      }
      send({ type: "Event", id: stream.id, event });
      stream.next += 1;
    }
    // A held stream ends at the next Ping (once the test has looked at the credit).
    if (stream.next === script.length && !stream.hold && !stream.done) end(stream, send);
  };
  const daemon = await fakeDaemon((message, send) => {
    if (message.type === "Request" && message.body.type === "Generate") {
      const stream = { id: message.id, credit: message.body.initial_credit, next: 0, hold: message.body.params.max_tokens === 64, done: false };
      streams.set(message.id, stream);
      pump(stream, send);
    } else if (message.type === "Credit") {
      credits.push(message.events);
      const stream = streams.get(message.id);
      stream.credit += message.events;
      pump(stream, send);
    } else if (message.type === "Request") {
      send({ type: "Response", id: message.id, body: { type: "Pong" } });
      for (const stream of streams.values()) if (stream.hold && !stream.done) end(stream, send);
    }
  });
  const client = await connect({ socket: daemon.path, fallback: false });
  const chat = [{ role: "user", content: "Weather in Oslo and Paris?" }];
  const tools = [{ name: "get_weather", parameters: WEATHER }];
  try {
    // Read one by one with a window of 2 (a grant per token read): three tokens, three grants.
    const stream = client.chat("g", chat, { max_tokens: 64, tools }, { window: 2 });
    const iterator = stream[Symbol.asyncIterator]();
    const items = [];
    for (let i = 0; i < script.length; i++) items.push((await iterator.next()).value);
    assert.deepEqual(items, [
      { type: "token", text: "Checking.", token: 1, logprobs: null },
      { type: "token", text: "", token: 2, logprobs: null },
      { type: "toolCall", ...callA },
      { type: "token", text: "", token: 3, logprobs: null },
      { type: "toolCall", ...callB },
    ]);
    await client.ping(); // every frame the client sent before it has reached the daemon
    assert.deepEqual(credits, [1, 1, 1], "a credit per token read, none per call");
    assert.deepEqual(await iterator.next(), { done: true, value: undefined });
    assert.equal((await stream.summary).finish_reason, "ToolCalls");

    // Unread, then `summary`: credit for the buffered tokens (2), not the call; then 1 per token arriving.
    credits.length = 0;
    const unread = client.chat("g", chat, { max_tokens: 8, tools }, { window: 2 });
    while (unread.buffered < 3) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal((await unread.summary).finish_reason, "ToolCalls");
    await client.ping();
    assert.deepEqual(credits, [2, 1]);
    const whole = await unread.complete();
    assert.deepEqual(whole.toolCalls, [callA, callB]);
    assert.deepEqual([whole.text, whole.tokens, whole.summary.finish_reason], ["Checking.", [1, 2, 3], "ToolCalls"]);
  } finally {
    await client.close();
    await daemon.close();
  }
});
