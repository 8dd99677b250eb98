// Client behaviour against a scripted daemon (test/fake-daemon.mjs): the retry policy and
// its validation, a fatal Busy, a Generation's summary without a reader, concurrent
// next(), complete(), the error classes' names, the exact requests rerank, embedding
// prompts, logprobs and constraints send, and tokens with and without logprobs.
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

/** A ModelInfo as the daemon sends it (v4: with prompts, default_prompt, estimated_bytes). */
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
    assert.deepEqual([embedder.info.prompts, embedder.info.default_prompt, embedder.info.estimated_bytes], [["document", "query"], "query", 3 << 20]);
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
      { text: " Paris", token: 7042, logprobs: paris },
      { text: "é", token: null, logprobs: null },
    ]);
    const plain = await client.chat("g", [{ role: "user", content: "Hi" }], { max_tokens: 2, temperature: 0 }).complete();
    assert.deepEqual([plain.text, plain.tokens, plain.logprobs], ["Hello", [5], []]);
    const lease = await client.lease("g");
    const leased = await lease.generate("Hi", { max_tokens: 1, temperature: 0, logprobs: 0 }).complete();
    assert.deepEqual([leased.text, leased.tokens, leased.logprobs], ["!", [0], [alone]]);
    await lease.close();
    // A negative count cannot be encoded: refused before anything is sent.
    await assert.rejects(client.generate("g", "Hi", { logprobs: -1 }).complete(), InvalidArgumentError);

    const params = (logprobs, max_tokens) => ({ max_tokens, temperature: 0, top_p: 1, top_k: 0, min_p: 0, repetition_penalty: 1, seed: null, stop: [], logprobs, constraint: null });
    const generate = (model, input, p) => ({ type: "Generate", model, input, params: p, initial_credit: 32, priority: "Interactive", deadline_ms: null });
    assert.deepEqual(
      daemon.received.map((m) => m.body),
      [
        generate({ type: "Name", value: "g" }, { type: "Raw", value: "Hi" }, params(3, 2)),
        generate({ type: "Name", value: "g" }, { type: "Chat", value: [{ role: "user", content: "Hi" }] }, params(null, 2)),
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

    const params = (constraint) => ({ max_tokens: 8, temperature: 0, top_p: 1, top_k: 0, min_p: 0, repetition_penalty: 1, seed: null, stop: [], logprobs: null, constraint });
    const generate = (model, input, constraint) => ({ type: "Generate", model, input, params: params(constraint), initial_credit: 32, priority: "Interactive", deadline_ms: null });
    const [byName, byLease, raw, chatInput] = [{ type: "Name", value: "g" }, { type: "Lease", value: 9 }, { type: "Raw", value: "Hi" }, { type: "Chat", value: chat }];
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
    // JsonObject: Some (1), tag 1 and nothing more; then credit 32, Interactive, no deadline.
    assert.ok(Buffer.from(daemon.bodies[2]).subarray(-5).equals(Buffer.from([1, 1, 32, 0, 0])));
  } finally {
    await client.close();
    await daemon.close();
  }
});
