// Test harness: the real binaries, a real `mlxd serve` on a temporary socket (as the Rust
// harness in tests/src/lib.rs starts it), the MiniLM reference vectors, and polling.
import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createConnection } from "node:net";
import { fileURLToPath } from "node:url";

/** The repository root (clients/node/test → ../../..). */
export const repoRoot = fileURLToPath(new URL("../../..", import.meta.url)).replace(/\/$/, "");
/** The package's built entry point (what the tests exercise: the compiled JS). */
export const distEntry = fileURLToPath(new URL("../dist/index.js", import.meta.url));

/** A workspace binary: `$MLXD_BIN` / `$MLXCTL_BIN`, else `<repo>/target/debug/<name>` (what `make test` builds). */
export function binary(name) {
  const override = process.env[`${name.toUpperCase()}_BIN`];
  const path = override || `${repoRoot}/target/debug/${name}`;
  if (!existsSync(path)) {
    throw new Error(`${path} not found: build it (cargo build --workspace --bins) or set ${name.toUpperCase()}_BIN`);
  }
  return path;
}

/** Per-test limit: a hang fails its test instead of blocking the suite. */
export const TEST_TIMEOUT = 60_000;

/** A private directory under /tmp (short: socket paths are limited to ~100 bytes). */
export function tempDir() {
  return mkdtempSync("/tmp/mlxd-n");
}

/** Process groups of the daemons started and not yet stopped. */
const live = new Set();
function killAll() {
  for (const pid of live) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  live.clear();
}
// A test file that dies must not leave daemons behind: not at exit, nor when it is
// interrupted (Ctrl-C, or the runner's SIGTERM), which skips "exit" handlers.
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAll();
    // Then die of it, unless someone else (the test runner) handles it.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

/**
 * Starts `mlxd serve --socket <tmp>/s.sock [args]` in its own process group, with its log
 * in `<tmp>/daemon.log`, and waits until the socket accepts.
 */
export async function startDaemon(args = [], env = {}) {
  const dir = tempDir();
  const socket = `${dir}/s.sock`;
  const log = `${dir}/daemon.log`;
  const logFd = openSync(log, "w");
  const child = spawn(binary("mlxd"), ["serve", "--socket", socket, ...args], {
    env: {
      ...process.env,
      MLXD_LOG: "debug",
      MLXD_LOG_FORMAT: "human",
      // A developer's own ~/.config/mlxd/config.toml must not change what tests see.
      XDG_CONFIG_HOME: dir,
      ...env,
    },
    stdio: ["ignore", "ignore", logFd],
    detached: true,
  });
  closeSync(logFd);
  live.add(child.pid);
  let exited = null;
  const exit = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      exited = signal ?? code;
      resolve();
    }),
  );
  const logText = () => (existsSync(log) ? readFileSync(log, "utf8") : "");
  const deadline = Date.now() + 30_000;
  while (!(await accepts(socket))) {
    if (exited !== null) throw new Error(`mlxd exited during start-up (${exited}):\n${logText()}`);
    if (Date.now() > deadline) throw new Error(`mlxd did not listen within 30 s:\n${logText()}`);
    await sleep(20);
  }
  return {
    socket,
    dir,
    log,
    pid: child.pid,
    logText,
    /** SIGKILL to the daemon's whole process group (its workers too): a crash. */
    kill() {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        /* gone */
      }
    },
    /**
     * SIGTERM to the process group; SIGKILL after 10 s; then SIGKILL to whatever is left of
     * the group (workers of a daemon that died); removes the directory.
     */
    async stop() {
      if (exited === null) {
        try {
          process.kill(-child.pid, "SIGTERM");
        } catch {
          /* gone */
        }
        const timer = setTimeout(() => {
          try {
            process.kill(-child.pid, "SIGKILL");
          } catch {
            /* gone */
          }
        }, 10_000);
        await exit;
        clearTimeout(timer);
      }
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        /* gone */
      }
      live.delete(child.pid);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function accepts(socket) {
  return new Promise((resolve) => {
    const connection = createConnection({ path: socket });
    connection.once("connect", () => {
      connection.destroy();
      resolve(true);
    });
    connection.once("error", () => resolve(false));
  });
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` every 20 ms until it is truthy or `withinMs` pass; returns whether it held. */
export async function eventually(withinMs, check) {
  const deadline = Date.now() + withinMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

/** Runs a program to completion; resolves { code, signal, stdout, stderr }. Kills it after `timeoutMs`. */
export function run(program, args, { env = process.env, timeoutMs = 60_000, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${program} ${args.join(" ")} did not finish within ${timeoutMs} ms\n${stderr}`));
    }, timeoutMs);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.end(input ?? "");
  });
}

/**
 * Where fixtures are looked for, in order: `$MLXD_FIXTURES` (if set), the checkout's tiny
 * sentence-transformers models (python/tests/fixtures/st), then ../shared/fixtures beside the checkout.
 */
export function fixturesDirs() {
  const defaults = [`${repoRoot}/python/tests/fixtures/st`, `${repoRoot}/../shared/fixtures`];
  return process.env.MLXD_FIXTURES ? [process.env.MLXD_FIXTURES, ...defaults] : defaults;
}

/** The first fixture file or directory `name` in {@link fixturesDirs} (the first place's path if none, so errors name it). */
export function fixture(name) {
  const places = fixturesDirs().map((dir) => `${dir}/${name}`);
  return places.find((path) => existsSync(path)) ?? places[0];
}

/**
 * Fixture models (directories in {@link fixturesDirs}) the shared daemon serves besides its
 * own: a sentence-transformers model with named prompts ("query: " for "query") and a
 * reranker (a cross-encoder).
 */
export const FIXTURE_MODELS = ["st-bert-mean", "rerank-bert"];

/** `--model NAME=DIR` for each fixture model there is (the tests of a missing one fail, naming it). */
export function fixtureModelArgs() {
  return FIXTURE_MODELS.filter((name) => existsSync(fixture(name))).flatMap((name) => ["--model", `${name}=${fixture(name)}`]);
}

/** The sentence-transformers reference vectors for MiniLM (in `$MLXD_FIXTURES` or ../shared/fixtures). */
export function minilmReference() {
  return JSON.parse(readFileSync(fixture("minilm_reference.json"), "utf8")).items;
}

export function cosine(a, b) {
  if (a.length !== b.length) throw new Error(`vector lengths differ: ${a.length} vs ${b.length}`);
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

/** The virtualenv's Python, found as the daemon finds it: `$MLXD_PYTHON`, `$VIRTUAL_ENV`, else the checkout's .venv. */
export function venvPython() {
  const venv = process.env.MLXD_PYTHON || process.env.VIRTUAL_ENV || `${repoRoot}/.venv`;
  return `${venv}/bin/python`;
}

/** Where the default model store keeps an imported model (as mlxd resolves it: `$MLXD_STORE`, else `$XDG_DATA_HOME/mlxd`, else ~/.local/share/mlxd). */
export function storeModelDir(name) {
  const root = process.env.MLXD_STORE || `${process.env.XDG_DATA_HOME || `${process.env.HOME}/.local/share`}/mlxd`;
  return `${root}/models/${name}`;
}

/**
 * Builds into `out` a tiny random model with Qwen 2.5's real tool-calling template
 * (`$MLXD_TOOL_TEMPLATE`, else python/tests/fixtures/templates) on SmolLM2's tokenizer, with
 * tests/tools/tiny_mlx_lm.py (a second or two): no bundled model has a template that takes
 * tools. Its weights are random, so only what the daemon enforces (a forced call) is meaningful.
 */
export async function buildToolModel(out) {
  const template = process.env.MLXD_TOOL_TEMPLATE || `${repoRoot}/python/tests/fixtures/templates/Qwen-Qwen2.5-7B-Instruct.jinja`;
  const args = [`${repoRoot}/tests/tools/tiny_mlx_lm.py`, out, "--tokenizer-from", storeModelDir("smollm2"), "--chat-template", template];
  // The BLAS the daemon preloads into its workers, where installed (as the Rust tests build it).
  const blas = ["/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3", "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3"].find((lib) => existsSync(lib));
  const env = blas ? { ...process.env, LD_PRELOAD: blas } : process.env;
  const { code, stderr } = await run(venvPython(), args, { env, timeoutMs: 50_000 });
  if (code !== 0) throw new Error(`building the tiny tool model failed (${code}):\n${stderr}`);
}
