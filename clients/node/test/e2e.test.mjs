// End to end against the real daemon and MLX workers: one `mlxd serve` shared by every
// test in this file (each test cleans up the leases it takes), serving the fixture models
// for named embedding prompts and reranking too, and a tiny model with a tool-calling
// template (built here); structured output on smollm2.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  BadRequestError,
  ConnectionClosedError,
  InvalidArgumentError,
  InvalidLeaseError,
  MlxdError,
  NotFoundError,
  PROTOCOL_VERSION,
  VersionMismatchError,
  connect,
} from "../dist/index.js";
import {
  binary,
  buildToolModel,
  cosine,
  distEntry,
  eventually,
  fixtureModelArgs,
  fixturesDirs,
  minilmReference,
  run,
  sleep,
  startDaemon,
  tempDir,
  TEST_TIMEOUT,
} from "./helpers.mjs";

let daemon;
let client;
/** Where the tiny tool-calling model served as "tiny-tools" is built. */
let toolModelDir;

before(async () => {
  toolModelDir = tempDir();
  await buildToolModel(`${toolModelDir}/tiny`);
  daemon = await startDaemon([...fixtureModelArgs(), "--model", `tiny-tools=${toolModelDir}/tiny`]);
  client = await connect({ socket: daemon.socket, fallback: false, retry: false, clientName: "node-e2e" });
}, { timeout: TEST_TIMEOUT });

after(async () => {
  await client?.close();
  await daemon?.stop();
  if (toolModelDir) rmSync(toolModelDir, { recursive: true, force: true });
}, { timeout: TEST_TIMEOUT });

/** The named model's entry in the daemon's status. */
async function model(name) {
  const found = (await client.status()).models.find((m) => m.name === name);
  assert.ok(found, `no model ${name} in status`);
  return found;
}

test("connects, and reads status, models, metrics and weights", { timeout: TEST_TIMEOUT }, async () => {
  assert.equal(client.welcome.protocol_version, PROTOCOL_VERSION);
  assert.deepEqual(client.endpoint, { type: "socket", path: daemon.socket });
  assert.ok(client.welcome.limits.max_frame_len >= 65536);
  await client.ping();
  const status = await client.status();
  assert.equal(status.endpoint, daemon.socket);
  assert.equal(status.protocol_version, PROTOCOL_VERSION);
  const models = await client.models();
  const names = models.map((m) => m.name);
  assert.ok(names.includes("minilm") && names.includes("smollm2"), names.join(", "));
  // Since v7: whether the chat template takes tools (Qwen 2.5's does, SmolLM2's does not).
  const takesTools = (name) => models.find((m) => m.name === name)?.tools;
  assert.deepEqual([takesTools("tiny-tools"), takesTools("smollm2")], [true, false]);
  assert.match(await client.metrics(), /# EOF\n$/);
  assert.ok(Array.isArray(await client.weights()));
});

test("MiniLM embeddings match the sentence-transformers fixtures (cosine >= 0.999)", { timeout: TEST_TIMEOUT }, async () => {
  const reference = minilmReference();
  assert.equal(reference.length, 24);
  const stages = new Set();
  const minilm = await client.lease("minilm", { onProgress: (p) => stages.add(p.stage) });
  try {
    assert.equal(minilm.info.dim, 384);
    const result = await minilm.embedDetailed(reference.map((r) => r.text));
    assert.equal(result.count, 24);
    assert.equal(result.dim, 384);
    assert.ok(result.vectors instanceof Float32Array);
    reference.forEach((item, i) => {
      const similarity = cosine(result.rows[i], item.embedding);
      assert.ok(similarity >= 0.999, `cosine ${similarity} for ${JSON.stringify(item.text.slice(0, 40))}`);
    });
    // One at a time, by name rather than lease: the empty, non-ASCII and long texts.
    const picks = reference.filter((r) => r.text === "" || /[^\x00-\x7f]/.test(r.text) || r.text.length > 1000);
    assert.ok(picks.length >= 3);
    for (const item of picks) {
      const [vector] = await client.embed("minilm", [item.text]);
      assert.ok(vector instanceof Float32Array && vector.length === 384);
      const similarity = cosine(vector, item.embedding);
      assert.ok(similarity >= 0.999, `cosine ${similarity} alone for ${JSON.stringify(item.text.slice(0, 40))}`);
    }
    const tokens = await minilm.tokenize("hello world");
    assert.deepEqual(tokens, [101, 7592, 2088, 102]);
    assert.equal(await minilm.detokenize(tokens), "hello world");
  } finally {
    await minilm.close();
  }
  assert.equal((await model("minilm")).leases, 0);
});

/** A fixture model's entry in the daemon's list; fails naming the directory when it is not served. */
async function fixtureModel(name) {
  const found = (await client.models()).find((m) => m.name === name);
  assert.ok(found, `fixture model ${name} is not served: no directory ${name} in ${fixturesDirs().join(", ")} (set MLXD_FIXTURES)`);
  return found;
}

function maxDifference(a, b) {
  assert.equal(a.length, b.length);
  let most = 0;
  for (let i = 0; i < a.length; i++) most = Math.max(most, Math.abs(a[i] - b[i]));
  return most;
}

test("named embedding prompts: \"query\" puts \"query: \" before the text; an unknown one is refused, naming them", { timeout: TEST_TIMEOUT }, async () => {
  const info = await fixtureModel("st-bert-mean");
  assert.equal(info.kind, "Embedding");
  assert.ok(info.prompts.includes("query"), info.prompts.join(", "));
  assert.deepEqual(info.prompts, [...info.prompts].sort());
  assert.ok(Number(info.estimated_bytes) > 0);
  const text = "How long do giant pandas live?";
  const st = await client.lease("st-bert-mean");
  try {
    assert.deepEqual([st.info.prompts, st.info.default_prompt], [info.prompts, info.default_prompt]);
    const [plain] = await st.embed([text], { prompt: "" });
    const [query] = await st.embed([text], { prompt: "query" });
    const [spelledOut] = await st.embed([`query: ${text}`], { prompt: "" });
    const [byDefault] = await st.embed([text]);
    const [namedDefault] = await st.embed([text], { prompt: info.default_prompt ?? "" });
    assert.ok(maxDifference(query, spelledOut) <= 1e-5, "\"query\" is not \"query: \" before the text");
    assert.ok(maxDifference(query, plain) > 1e-3, "the prompt changed nothing");
    // No prompt named: the model's default (none if it has none).
    assert.ok(maxDifference(byDefault, namedDefault) <= 1e-5);
    const [byName] = await client.embed("st-bert-mean", [text], { prompt: "query" });
    assert.ok(maxDifference(byName, query) <= 1e-5);
  } finally {
    await st.close();
  }
  const err = await client.embed("st-bert-mean", [text], { prompt: "no-such-prompt" }).catch((e) => e);
  assert.ok(err instanceof BadRequestError, String(err));
  for (const name of info.prompts) assert.ok(err.message.includes(`"${name}"`), err.message);
});

test("rerank scores every document once, in [0, 1], best first; topN cuts; other kinds are refused", { timeout: TEST_TIMEOUT }, async () => {
  assert.equal((await fixtureModel("rerank-bert")).kind, "Rerank");
  const query = "What is the capital of France?";
  const documents = [
    "Paris is the capital and largest city of France.",
    "The giant panda is a bear species endemic to China.",
    "Berlin is the capital of Germany.",
    "France is a country in Western Europe.",
    "bananas",
  ];
  const whole = await client.rerank("rerank-bert", query, documents);
  assert.equal(whole.model, "rerank-bert");
  assert.ok(Number(whole.prompt_tokens) > 0);
  assert.deepEqual(whole.results.map((r) => r.index).sort(), [0, 1, 2, 3, 4]);
  const scores = whole.results.map((r) => r.score);
  assert.ok(scores.every((s) => s >= 0 && s <= 1), scores.join(", "));
  assert.deepEqual(scores, [...scores].sort((a, b) => b - a), "not best first");

  // topN cuts to the best (by lease here); each document keeps its score.
  const byIndex = new Map(whole.results.map((r) => [r.index, r.score]));
  const reranker = await client.lease("rerank-bert");
  let top;
  try {
    assert.equal(reranker.info.kind, "Rerank");
    top = await reranker.rerank(query, documents, { topN: 2 });
  } finally {
    await reranker.close();
  }
  assert.equal(top.results.length, 2);
  for (const { index, score } of top.results) assert.ok(Math.abs(score - byIndex.get(index)) <= 1e-5);
  assert.ok(Math.min(...top.results.map((r) => r.score)) >= scores[2] - 1e-5);

  // Each kind of model serves only its own requests.
  await assert.rejects(client.rerank("st-bert-mean", query, documents), BadRequestError);
  await assert.rejects(client.rerank("minilm", query, documents), BadRequestError);
  await assert.rejects(client.embed("rerank-bert", documents), BadRequestError);
});

/** `mlxctl generate --json` against the test daemon: its tokens and text. */
async function mlxctlGenerate(prompt, extraArgs) {
  const args = ["--socket", daemon.socket, "--no-fallback", "--json", "generate", "--model", "smollm2"];
  args.push("--temperature", "0", "--max-tokens", "8", ...extraArgs, prompt);
  const { code, stdout, stderr } = await run(binary("mlxctl"), args);
  assert.equal(code, 0, `mlxctl failed: ${stderr}`);
  const lines = stdout.trim().split("\n").map((line) => JSON.parse(line));
  const tokens = lines.filter((l) => "text" in l);
  return { text: tokens.map((t) => t.text).join(""), tokens: tokens.map((t) => t.token ?? null) };
}

test("greedy generation equals `mlxctl generate` for the same prompt (raw and chat)", { timeout: TEST_TIMEOUT }, async () => {
  const prompt = "The capital of France is";
  const smollm2 = await client.lease("smollm2");
  try {
    const expectedRaw = await mlxctlGenerate(prompt, ["--raw"]);
    const raw = smollm2.generate(prompt, { max_tokens: 8, temperature: 0 });
    const rawTokens = [];
    for await (const token of raw) rawTokens.push(token);
    assert.equal(rawTokens.map((t) => t.text).join(""), expectedRaw.text);
    assert.deepEqual(rawTokens.map((t) => t.token), expectedRaw.tokens);
    const summary = await raw.summary;
    assert.equal(summary.completion_tokens, expectedRaw.tokens.filter((t) => t !== null).length);

    const expectedChat = await mlxctlGenerate(prompt, []);
    const chat = smollm2.chat([{ role: "user", content: prompt }], { max_tokens: 8, temperature: 0 });
    assert.equal(await chat.text(), expectedChat.text);
    assert.ok(["Stop", "Length"].includes((await chat.summary).finish_reason));
    assert.ok(expectedChat.text.length > 0);
  } finally {
    await smollm2.close();
  }
});

test("greedy logprobs: each token's logprob <= 0, k alternatives best first, the first the chosen token", { timeout: TEST_TIMEOUT }, async () => {
  const messages = [{ role: "user", content: "Name three colours of the rainbow." }];
  const withLogprobs = [];
  for await (const token of client.chat("smollm2", messages, { max_tokens: 4, temperature: 0, logprobs: 3 })) withLogprobs.push(token);
  const without = [];
  for await (const token of client.chat("smollm2", messages, { max_tokens: 4, temperature: 0 })) without.push(token);

  const chosen = withLogprobs.filter((t) => t.token !== null);
  assert.equal(chosen.length, 4);
  for (const token of chosen) {
    const { logprobs } = token;
    assert.ok(logprobs !== null, `no logprobs on ${JSON.stringify(token)}`);
    assert.ok(logprobs.logprob <= 0, `logprob ${logprobs.logprob}`);
    assert.equal(logprobs.top.length, 3);
    const values = logprobs.top.map((t) => t.logprob);
    assert.deepEqual(values, [...values].sort((a, b) => b - a), "best first");
    assert.ok(values.every((v) => v <= 0));
    assert.equal(logprobs.top[0].token, token.token);
    assert.equal(logprobs.top[0].logprob, logprobs.logprob);
    assert.equal(logprobs.top[0].text, logprobs.text);
  }
  assert.ok(withLogprobs.filter((t) => t.token === null).every((t) => t.logprobs === null));
  // The same tokens without logprobs, which then have none.
  assert.deepEqual(without.filter((t) => t.token !== null).map((t) => t.token), chosen.map((t) => t.token));
  assert.ok(without.every((t) => t.logprobs === null));

  // complete() keeps them, one per token id; more than 20 alternatives is the daemon's BadRequest.
  const smollm2 = await client.lease("smollm2");
  try {
    const whole = await smollm2.chat(messages, { max_tokens: 4, temperature: 0, logprobs: 3 }).complete();
    assert.deepEqual(whole.logprobs.map((l) => l.top[0].token), whole.tokens);
    await assert.rejects(smollm2.chat(messages, { max_tokens: 4, logprobs: 21 }).text(), BadRequestError);
  } finally {
    await smollm2.close();
  }
});

test("structured output: a JSON schema and a regex hold and end Stop; a schema that cannot compile is BadRequest", { timeout: TEST_TIMEOUT }, async () => {
  const schema = { type: "object", properties: { answer: { type: "boolean" } }, required: ["answer"], additionalProperties: false };
  const sky = await client
    .chat("smollm2", [{ role: "user", content: "Is the sky blue? Answer in JSON." }], { max_tokens: 60, temperature: 0, constraint: { jsonSchema: schema } })
    .complete();
  const value = JSON.parse(sky.text);
  assert.deepEqual(Object.keys(value), ["answer"], sky.text);
  assert.equal(typeof value.answer, "boolean", sky.text);
  assert.equal(sky.summary.finish_reason, "Stop");

  const smollm2 = await client.lease("smollm2");
  try {
    const phone = await smollm2
      .chat([{ role: "user", content: "A phone number?" }], { max_tokens: 60, temperature: 0, constraint: { regex: "\\d{3}-\\d{4}" } })
      .complete();
    // The daemon's regexes are Rust's (llguidance): `\d` is any Unicode decimal digit (greedy
    // smollm2 writes U+1FBF8, SEGMENTED DIGIT EIGHT), JavaScript's only ASCII ones.
    assert.match(phone.text, /^\p{Nd}{3}-\p{Nd}{4}$/u);
    assert.equal(phone.summary.finish_reason, "Stop");
    const ascii = await smollm2
      .chat([{ role: "user", content: "A phone number?" }], { max_tokens: 60, temperature: 0, constraint: { regex: "[0-9]{3}-[0-9]{4}" } })
      .complete();
    assert.match(ascii.text, /^[0-9]{3}-[0-9]{4}$/);
    assert.equal(ascii.summary.finish_reason, "Stop");
    await assert.rejects(
      smollm2.generate("x", { max_tokens: 4, constraint: { jsonSchema: { type: "frob" } } }).text(),
      (error) => error instanceof BadRequestError && /frob/.test(error.message),
    );
  } finally {
    await smollm2.close();
  }
});

test("an AbortSignal cancels a stream mid-way; so do cancel() and leaving the loop", { timeout: TEST_TIMEOUT }, async () => {
  const controller = new AbortController();
  const aborted = client.generate("smollm2", "Once upon a time", { max_tokens: 200, temperature: 0 }, { signal: controller.signal });
  let seen = 0;
  await assert.rejects(
    (async () => {
      for await (const _ of aborted) {
        if (++seen === 2) controller.abort();
      }
    })(),
    (err) => err.name === "AbortError",
  );
  assert.equal(seen, 2);
  const summary = await aborted.summary;
  assert.equal(summary.finish_reason, "Cancelled");
  assert.ok(summary.completion_tokens < 200, `${summary.completion_tokens} tokens`);

  const cancelled = client.generate("smollm2", "Once upon a time", { max_tokens: 200, temperature: 0 });
  let count = 0;
  for await (const _ of cancelled) {
    count += 1;
    cancelled.cancel();
  }
  assert.equal(count, 1);
  assert.equal((await cancelled.summary).finish_reason, "Cancelled");

  const left = client.generate("smollm2", "Once upon a time", { max_tokens: 200, temperature: 0 });
  for await (const _ of left) break;
  assert.equal((await left.summary).finish_reason, "Cancelled");

  // An already aborted signal sends nothing.
  const never = client.generate("smollm2", "x", {}, { signal: AbortSignal.abort() });
  await assert.rejects(never.text(), (err) => err.name === "AbortError");
  assert.equal(never.requestId, -1);
  assert.equal(client.inFlight, 0);
});

test("a slow consumer holds exactly its credit: the stream pauses at the window", { timeout: TEST_TIMEOUT }, async () => {
  const window = 4;
  const generation = client.generate("smollm2", "Once upon a time", { max_tokens: 16, temperature: 0 }, { window });
  assert.ok(await eventually(30_000, () => generation.buffered === window), "the window never filled");
  // Unpaused, the model would produce the 12 other tokens in this time.
  await sleep(1500);
  assert.equal(generation.buffered, window, "tokens arrived beyond the granted credit");
  assert.equal(generation.finished, false);
  let count = 0;
  for await (const _ of generation) {
    assert.ok(generation.buffered <= window, `${generation.buffered} buffered`);
    count += 1;
    await sleep(5);
  }
  const summary = await generation.summary;
  assert.ok(["Length", "Stop"].includes(summary.finish_reason));
  assert.ok(count >= summary.completion_tokens, `${count} tokens read, ${summary.completion_tokens} generated`);
  assert.ok(count > window);
});

test("a lease is released when the client process exits, with or without close()", { timeout: TEST_TIMEOUT }, async () => {
  const script = (tail) => `
    import { connect } from ${JSON.stringify(distEntry)};
    const client = await connect({ socket: ${JSON.stringify(daemon.socket)}, fallback: false });
    const lease = await client.lease("minilm");
    await lease.embed(["still here"]);
    console.log("leased");
    ${tail}`;
  // One ends its script holding the lease (an idle connection does not keep Node alive);
  // the other is killed with SIGKILL while it holds one.
  const natural = run(process.execPath, ["--input-type=module", "-e", script("")], { timeoutMs: 30_000 });
  const { spawn } = await import("node:child_process");
  const killed = spawn(process.execPath, ["--input-type=module", "-e", script("setInterval(() => {}, 1000);")], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const killedExit = new Promise((resolve) => killed.once("exit", resolve));
  await new Promise((resolve, reject) => {
    killed.stdout.on("data", (chunk) => String(chunk).includes("leased") && resolve());
    killed.once("exit", () => reject(new Error("the child exited before leasing")));
  });
  assert.ok((await model("minilm")).leases >= 1);
  killed.kill("SIGKILL");
  await killedExit;
  const done = await natural;
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /leased/);
  assert.ok(await eventually(5000, async () => (await model("minilm")).leases === 0), "leases left after the clients exited");
});

test("a lease object that is garbage-collected unclosed is released on its live connection", { timeout: TEST_TIMEOUT }, async () => {
  const script = `
    import { connect } from ${JSON.stringify(distEntry)};
    const client = await connect({ socket: ${JSON.stringify(daemon.socket)}, fallback: false });
    const leases = async () => (await client.status()).models.find((m) => m.name === "minilm").leases;
    await (async () => { await (await client.lease("minilm")).embed(["dropped"]); })();
    const before = await leases();
    let after = before;
    for (let i = 0; i < 100 && after !== 0; i++) {
      globalThis.gc();
      await new Promise((resolve) => setTimeout(resolve, 20));
      after = await leases();
    }
    console.log(JSON.stringify({ before, after }));
    await client.close();`;
  const { code, stdout, stderr } = await run(process.execPath, ["--expose-gc", "--input-type=module", "-e", script]);
  assert.equal(code, 0, stderr);
  assert.deepEqual(JSON.parse(stdout), { before: 1, after: 0 });
});

test("a protocol version the daemon does not speak is refused clearly", { timeout: TEST_TIMEOUT }, async () => {
  const err = await connect({ socket: daemon.socket, fallback: false, protocolVersion: 2 }).then(
    () => assert.fail("connected with protocol 2"),
    (e) => e,
  );
  assert.ok(err instanceof VersionMismatchError, String(err));
  assert.equal(err.code, "VersionMismatch");
  assert.equal(err.fatal, true);
  assert.match(err.message, /\b2\b/);
  assert.match(err.message, new RegExp(`\\b${PROTOCOL_VERSION}\\b`));
});

test("bad input gets typed errors, and the session goes on", { timeout: TEST_TIMEOUT }, async () => {
  await assert.rejects(client.embed("no-such-model", ["x"]), NotFoundError);
  await assert.rejects(client.generate("smollm2", "x", { max_tokens: 0 }).text(), BadRequestError);
  await assert.rejects(client.generate("smollm2", "x", { temperature: -1, max_tokens: 4 }).summary, BadRequestError);
  // Values that cannot be encoded are refused before anything is sent.
  await assert.rejects(client.embed("minilm", [42]), InvalidArgumentError);
  await assert.rejects(client.embed("minilm", ["\ud800"]), InvalidArgumentError);
  await assert.rejects(client.detokenize("minilm", [-1]), InvalidArgumentError);
  await assert.rejects(client.generate("smollm2", "x", { max_tokens: 2 ** 32 }).text(), InvalidArgumentError);
  await assert.rejects(client.generate("smollm2", "x", {}, { window: 0 }).summary, InvalidArgumentError);
  // A released lease is refused by the daemon.
  const lease = await client.lease("minilm");
  await lease.close();
  await lease.close(); // idempotent
  const err = await lease.embed(["x"]).catch((e) => e);
  assert.ok(err instanceof InvalidLeaseError && err instanceof MlxdError, String(err));
  assert.equal(err.code, "InvalidLease");
  await client.ping();
  assert.equal(client.inFlight, 0);

  // A closed client refuses further requests.
  const other = await connect({ socket: daemon.socket, fallback: false });
  await other.close();
  await assert.rejects(other.ping(), ConnectionClosedError);
});

test("Symbol.asyncDispose releases a lease (await using)", { timeout: TEST_TIMEOUT, skip: !Symbol.asyncDispose && "no Symbol.asyncDispose" }, async () => {
  const lease = await client.lease("minilm");
  assert.equal((await model("minilm")).leases, 1);
  await lease[Symbol.asyncDispose]();
  assert.equal((await model("minilm")).leases, 0);
});

test("tool calls: a call forced by toolChoice is within its schema and ends ToolCalls; sent back with the tool's answer, the prompt grows", { timeout: TEST_TIMEOUT }, async () => {
  // Random weights: only the constrained call is meaningful.
  const parameters = {
    type: "object",
    properties: { city: { type: "string", enum: ["Paris", "Oslo"] }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
    required: ["city", "unit"],
    additionalProperties: false,
  };
  const tools = [{ name: "get_weather", description: "The weather in a city now.", parameters }];
  const messages = [{ role: "user", content: "What is the weather in Oslo?" }];
  const stream = client.chat("tiny-tools", messages, { max_tokens: 64, temperature: 0, tools, toolChoice: { function: "get_weather" } });
  const items = [];
  for await (const item of stream) items.push(item);
  const first = await stream.summary;
  const calls = items.filter((item) => item.type === "toolCall");
  assert.equal(calls.length, 1, JSON.stringify(items));
  const [call] = calls;
  assert.equal(call.name, "get_weather");
  assert.match(call.id, /^call_/);
  const args = JSON.parse(call.arguments);
  assert.deepEqual(Object.keys(args).sort(), ["city", "unit"], call.arguments);
  assert.ok(["Paris", "Oslo"].includes(args.city) && ["celsius", "fahrenheit"].includes(args.unit), call.arguments);
  assert.equal(first.finish_reason, "ToolCalls");
  // The tokens that spelt the call came before it, with no text.
  const at = items.indexOf(call);
  assert.ok(at > 0 && items[at - 1].type === "token" && items[at - 1].text === "", JSON.stringify(items));

  // The second turn: the assistant's call (the stream's item, as is) and the tool's answer.
  const answer = { role: "tool", toolCallId: call.id, name: call.name, content: '{"celsius": -3}' };
  const second = await client
    .chat("tiny-tools", [...messages, { role: "assistant", content: "", toolCalls: [call] }, answer], { max_tokens: 4, temperature: 0, tools })
    .complete();
  assert.ok(second.summary.prompt_tokens > first.prompt_tokens, `${second.summary.prompt_tokens} <= ${first.prompt_tokens}`);
  assert.ok(second.summary.completion_tokens >= 1);
  // A model whose template takes no tools refuses them.
  await assert.rejects(
    client.chat("smollm2", messages, { max_tokens: 4, tools }).text(),
    (error) => error instanceof BadRequestError && /does not take tools/.test(error.message),
  );
});

test("the README quick start runs as written", { timeout: TEST_TIMEOUT }, async () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const match = /## Quick start[\s\S]*?```js\n([\s\S]*?)```/.exec(readme);
  assert.ok(match, "README has a Quick start js block");
  const dir = tempDir();
  try {
    // As after `npm install /path/to/clients/node`: the package under node_modules.
    mkdirSync(`${dir}/node_modules`);
    symlinkSync(fileURLToPath(new URL("..", import.meta.url)), `${dir}/node_modules/mlxd-client`);
    writeFileSync(`${dir}/quickstart.mjs`, match[1]);
    const env = { ...process.env, MLXD_SOCKET: daemon.socket, MLXD_NO_FALLBACK: "1" };
    const { code, stdout, stderr } = await run(process.execPath, [`${dir}/quickstart.mjs`], { env, timeoutMs: 30_000 });
    assert.equal(code, 0, stderr);
    assert.match(stdout, /^384 Float32Array\(3\) \[/);
    assert.match(stdout, /finish_reason: '(Stop|Length)'/);
    assert.match(stdout, /completion_tokens: \d+/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
