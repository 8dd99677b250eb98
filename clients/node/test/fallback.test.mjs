// With no daemon: the private `mlxd stdio` fallback (said on stderr), and the typed errors
// when it is off or cannot start. Each case runs in a child process, whose stderr is read.
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, test } from "node:test";

import { FallbackError, NoDaemonError, connect } from "../dist/index.js";
import { binary, distEntry, minilmReference, cosine, run, tempDir, TEST_TIMEOUT } from "./helpers.mjs";

const dir = tempDir();
const nowhere = `${dir}/no-daemon.sock`;

after(() => rmSync(dir, { recursive: true, force: true }));

test("with no daemon, the client falls back to a private `mlxd stdio` and says so", { timeout: TEST_TIMEOUT }, async () => {
  const reference = minilmReference().find((r) => /[^\x00-\x7f]/.test(r.text));
  const script = `
    import { connect } from ${JSON.stringify(distEntry)};
    const client = await connect({ socket: ${JSON.stringify(nowhere)} });
    await client.ping();
    const status = await client.status();
    const [vector] = await client.embed("minilm", [${JSON.stringify(reference.text)}]);
    console.log(JSON.stringify({ endpoint: client.endpoint, statusEndpoint: status.endpoint, vector: Array.from(vector) }));
    await client.close();`;
  const env = { ...process.env, MLXD_BIN: binary("mlxd"), MLXD_SOCKET: "" };
  delete env.MLXD_NO_FALLBACK;
  const { code, stdout, stderr } = await run(process.execPath, ["--input-type=module", "-e", script], { env, timeoutMs: 60_000 });
  assert.equal(code, 0, stderr);
  assert.match(stderr, /no daemon at .*no-daemon\.sock/);
  assert.match(stderr, /fell back to a private `mlxd stdio`/);
  const result = JSON.parse(stdout);
  assert.equal(result.endpoint.type, "stdio");
  assert.equal(typeof result.endpoint.pid, "number");
  assert.equal(result.statusEndpoint, "stdio");
  const similarity = cosine(result.vector, reference.embedding);
  assert.ok(similarity >= 0.999, `cosine ${similarity}`);
});

test("with the fallback off (option or MLXD_NO_FALLBACK), a missing daemon is a NoDaemonError", { timeout: TEST_TIMEOUT }, async () => {
  const err = await connect({ socket: nowhere, fallback: false }).catch((e) => e);
  assert.ok(err instanceof NoDaemonError, String(err));
  assert.equal(err.code, "NoDaemon");
  assert.equal(err.path, nowhere);
  assert.match(err.message, /fallback is off/);

  const script = `
    import { connect, NoDaemonError } from ${JSON.stringify(distEntry)};
    const err = await connect({ socket: ${JSON.stringify(nowhere)} }).catch((e) => e);
    console.log(err instanceof NoDaemonError ? "NoDaemonError" : String(err));`;
  const { code, stdout, stderr } = await run(process.execPath, ["--input-type=module", "-e", script], {
    env: { ...process.env, MLXD_NO_FALLBACK: "1" },
  });
  assert.equal(code, 0, stderr);
  assert.equal(stdout.trim(), "NoDaemonError");
  assert.doesNotMatch(stderr, /fell back/);
});

test("a fallback binary that cannot start is a FallbackError", { timeout: TEST_TIMEOUT }, async () => {
  const lines = [];
  const err = await connect({ socket: nowhere, mlxdBinary: `${dir}/no-such-mlxd`, log: (line) => lines.push(line) }).catch((e) => e);
  assert.ok(err instanceof FallbackError, String(err));
  assert.equal(err.code, "Fallback");
  assert.match(err.message, /no-such-mlxd/);
  assert.match(lines.join("\n"), /fell back/);
});
