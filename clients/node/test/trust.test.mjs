// Who may serve the socket (README "Security"): checkServer's rule on a scripted file
// system (any user can run these), then on the real one, and connect() refusing before it
// connects. The cases that need another user's files chown them when run as root, and
// otherwise check as if this process were another user (checkServer's `uid`).
import assert from "node:assert/strict";
import { chmodSync, chownSync, lchownSync, mkdirSync, renameSync, rmSync, symlinkSync } from "node:fs";
import { createServer } from "node:net";
import { test } from "node:test";

import { ConnectionClosedError, UntrustedServerError, checkServer, connect } from "../dist/index.js";
import { TEST_TIMEOUT, tempDir } from "./helpers.mjs";

const ME = 1000;
const MLXD = 997;
const OTHER = 4242;
const root = process.getuid() === 0;

/** A file system of `entries` (path → { kind, uid, mode, target }), for checkServer. */
function fakeFs(entries) {
  let ino = 0n;
  const files = new Map(Object.entries(entries).map(([path, e]) => [path, { dev: 1n, ino: ++ino, target: "", ...e }]));
  const get = (path) => {
    const entry = files.get(path);
    if (!entry) throw Object.assign(new Error(`ENOENT: ${path}`), { code: "ENOENT" });
    return entry;
  };
  return { lstat: get, readlink: (path) => get(path).target };
}

const dir = (uid, mode) => ({ kind: "directory", uid, mode });
const sock = (uid, mode = 0o660) => ({ kind: "socket", uid, mode });
const link = (uid, target) => ({ kind: "symlink", uid, mode: 0o777, target });

/** checkServer as user ME on `entries`: the TrustedSocket, or the error thrown. */
function judge(path, entries, trustedUids = []) {
  try {
    return checkServer(path, trustedUids, ME, fakeFs(entries));
  } catch (err) {
    return err;
  }
}

function refused(result, pattern) {
  assert.ok(result instanceof UntrustedServerError, `expected a refusal, got ${result instanceof Error ? result : JSON.stringify(result, (_, v) => (typeof v === "bigint" ? String(v) : v))}`);
  assert.match(result.message, pattern);
}

const systemd = { "/": dir(0, 0o755), "/run": dir(0, 0o755), "/run/mlxd": dir(0, 0o750), "/run/mlxd/mlxd.sock": sock(MLXD) };

test("the system service's socket (file of user mlxd in root's /run/mlxd) is trusted; the same file where others may write is not", () => {
  assert.equal(judge("/run/mlxd/mlxd.sock", systemd).path, "/run/mlxd/mlxd.sock");
  assert.equal(judge("/run/mlxd/../mlxd/./mlxd.sock", systemd).path, "/run/mlxd/mlxd.sock");
  // Group-writable without the sticky bit: anyone in the group could swap it.
  refused(judge("/run/mlxd/mlxd.sock", { ...systemd, "/run/mlxd": dir(0, 0o770) }), /writable by group or others without the sticky bit/);
  // Sticky and world-writable (as /tmp): anyone may create files, so mlxd's is not trusted...
  refused(judge("/run/mlxd/mlxd.sock", { ...systemd, "/run/mlxd": dir(0, 0o1777) }), /uid 997.*may have made it/);
  // ... but one's own socket there is, and so is mlxd's once its uid is trusted.
  assert.ok(judge("/run/mlxd/mlxd.sock", { ...systemd, "/run/mlxd": dir(0, 0o1777), "/run/mlxd/mlxd.sock": sock(ME) }).ino > 0n);
  assert.ok(judge("/run/mlxd/mlxd.sock", { ...systemd, "/run/mlxd": dir(0, 0o1777) }, [MLXD]).ino > 0n);
  // A directory of someone else's anywhere on the path.
  refused(judge("/run/mlxd/mlxd.sock", { ...systemd, "/run": dir(OTHER, 0o755) }), /directory \/run on its path belongs to uid 4242.*MLXD_TRUSTED_UIDS/);
  assert.ok(judge("/run/mlxd/mlxd.sock", { ...systemd, "/run": dir(OTHER, 0o755) }, [OTHER]).ino > 0n);
  refused(judge("/run/mlxd/mlxd.sock", { ...systemd, "/run/mlxd/mlxd.sock": { kind: "other", uid: 0, mode: 0o644 } }), /not a socket/);
});

test("a symbolic link on the path is followed only if it belongs to you, root or a trusted uid", () => {
  const tmp = { "/": dir(0, 0o755), "/tmp": dir(0, 0o1777), "/tmp/evil": dir(OTHER, 0o755), "/tmp/evil/mlxd.sock": sock(OTHER) };
  // Another user's /tmp/mlxd-$UID, a link (to their directory or, swapped in time, to ours).
  refused(judge("/tmp/mlxd-1000/mlxd.sock", { ...tmp, "/tmp/mlxd-1000": link(OTHER, "/tmp/evil") }), /\/tmp\/mlxd-1000 on its path is a symbolic link of uid 4242/);
  refused(
    judge("/tmp/mlxd-1000/mlxd.sock", { ...tmp, "/tmp/mlxd-1000": link(OTHER, "/run/user/1000"), "/run": dir(0, 0o755), "/run/user": dir(0, 0o755), "/run/user/1000": dir(ME, 0o700), "/run/user/1000/mlxd.sock": sock(ME) }),
    /symbolic link of uid 4242/,
  );
  // Root's links (macOS: /tmp -> private/tmp) and one's own are followed, and their targets checked.
  const mac = { "/": dir(0, 0o755), "/tmp": link(0, "private/tmp"), "/private": dir(0, 0o755), "/private/tmp": dir(0, 0o1777), "/private/tmp/mlxd-1000": dir(ME, 0o700), "/private/tmp/mlxd-1000/mlxd.sock": sock(ME) };
  assert.equal(judge("/tmp/mlxd-1000/mlxd.sock", mac).path, "/private/tmp/mlxd-1000/mlxd.sock");
  assert.equal(judge("/tmp/mlxd-1000/mlxd.sock", { ...mac, "/tmp/mlxd-1000": link(ME, "/private/tmp/mlxd-1000") }).path, "/private/tmp/mlxd-1000/mlxd.sock");
  refused(judge("/tmp/mlxd-1000/mlxd.sock", { ...mac, "/private/tmp/mlxd-1000": link(ME, "/tmp/evil"), "/private/tmp/evil": dir(OTHER, 0o755), "/private/tmp/evil/mlxd.sock": sock(OTHER) }), /directory \/private\/tmp\/evil on its path belongs to uid 4242/);
  // A socket that is itself a link: the link and its target are judged.
  refused(judge("/tmp/s.sock", { ...tmp, "/tmp/s.sock": link(OTHER, "/tmp/evil/mlxd.sock") }), /symbolic link of uid 4242/);
  // Loops and missing files are errno errors (no daemon there), not refusals.
  const loop = judge("/tmp/a/s.sock", { ...tmp, "/tmp/a": link(ME, "/tmp/b"), "/tmp/b": link(ME, "/tmp/a") });
  assert.equal(loop.code, "ELOOP");
  assert.equal(judge("/tmp/mlxd-1000/mlxd.sock", tmp).code, "ENOENT");
});

/** A listening socket at `path`; `connections` counts who connected, `received` the bytes they sent. */
async function listen(path) {
  const state = { connections: 0, received: 0 };
  const server = createServer((socket) => {
    state.connections += 1;
    socket.on("data", (chunk) => (state.received += chunk.length));
  });
  await new Promise((resolve) => server.listen(path, resolve));
  state.close = () => new Promise((resolve) => server.close(resolve));
  return state;
}

/**
 * Makes `path` (not followed) another user's: chowned to OTHER when root; otherwise it is
 * already not OTHER's, so the check runs as if this process were OTHER. Returns the uid
 * to check as.
 */
function foreign(path) {
  if (root) {
    lchownSync(path, OTHER, OTHER);
    return 0;
  }
  return OTHER;
}

test("on the real file system: someone else's link, a directory others may write and a foreign socket in /tmp are refused", { timeout: TEST_TIMEOUT }, async () => {
  const base = tempDir();
  const linkPath = `${base}-link`;
  const tmpSocket = `${base}-s.sock`;
  const servers = [];
  try {
    const real = await listen(`${base}/s.sock`);
    servers.push(real);
    symlinkSync(base, linkPath);
    // Our own link in /tmp, to our own directory: followed.
    assert.equal(checkServer(`${linkPath}/s.sock`, []).path, `${base}/s.sock`);
    const as = foreign(linkPath);
    refused(
      (() => {
        try {
          return checkServer(`${linkPath}/s.sock`, [], as);
        } catch (err) {
          return err;
        }
      })(),
      /is a symbolic link of uid/,
    );
    if (root) {
      // Refused before connecting: the server behind the link never sees this client.
      const err = await connect({ socket: `${linkPath}/s.sock`, fallback: false }).catch((e) => e);
      assert.ok(err instanceof UntrustedServerError, String(err));
      assert.equal(real.connections, 0);
    }

    mkdirSync(`${base}/open`);
    chmodSync(`${base}/open`, 0o777);
    const open = await listen(`${base}/open/s.sock`);
    servers.push(open);
    const err = await connect({ socket: `${base}/open/s.sock`, fallback: false }).catch((e) => e);
    assert.ok(err instanceof UntrustedServerError, String(err));
    assert.match(err.message, /writable by group or others without the sticky bit/);
    assert.equal(open.connections, 0);

    // A socket straight in /tmp (sticky, anyone may create files there) of another user.
    const sticky = await listen(tmpSocket);
    servers.push(sticky);
    assert.ok(checkServer(tmpSocket, []).ino > 0n);
    const asOther = foreign(tmpSocket);
    assert.throws(() => checkServer(tmpSocket, [], asOther), /may have made it/);
    if (root) {
      const err2 = await connect({ socket: tmpSocket, fallback: false }).catch((e) => e);
      assert.ok(err2 instanceof UntrustedServerError, String(err2));
      assert.equal(sticky.connections, 0);
      assert.equal(sticky.received, 0);
    }

    // The identity returned is the file's: another socket renamed over it reads differently.
    const before = checkServer(`${base}/s.sock`, []);
    const other = await listen(`${base}/t.sock`);
    servers.push(other);
    renameSync(`${base}/t.sock`, `${base}/s.sock`);
    const after = checkServer(`${base}/s.sock`, []);
    assert.ok(before.ino !== after.ino || before.dev !== after.dev);
  } finally {
    for (const server of servers) await server.close();
    rmSync(linkPath, { force: true });
    rmSync(tmpSocket, { force: true });
    rmSync(base, { recursive: true, force: true });
  }
});

test("connect() sends nothing to an untrusted socket; a foreign socket in a private root directory gets the Hello", { skip: !root && "needs root to chown", timeout: TEST_TIMEOUT }, async () => {
  const base = tempDir();
  try {
    // Another user's directory: refused before connecting, whoever owns the socket.
    mkdirSync(`${base}/theirs`);
    const theirs = await listen(`${base}/theirs/evil.sock`);
    chownSync(`${base}/theirs`, OTHER, OTHER);
    chownSync(`${base}/theirs/evil.sock`, OTHER, OTHER);
    try {
      const err = await connect({ socket: `${base}/theirs/evil.sock`, fallback: false }).catch((e) => e);
      assert.ok(err instanceof UntrustedServerError, String(err));
      assert.match(err.message, /uid 4242/);
      assert.match(err.message, /MLXD_TRUSTED_UIDS/);
      assert.equal(theirs.connections, 0);
      assert.equal(theirs.received, 0);
      // Trusted explicitly, it gets a Hello (and, being no daemon, no Welcome).
      const trusted = await connect({ socket: `${base}/theirs/evil.sock`, fallback: false, trustedUids: [OTHER], handshakeTimeoutMs: 300 }).catch((e) => e);
      assert.ok(trusted instanceof ConnectionClosedError, String(trusted));
      assert.equal(theirs.connections, 1);
      assert.ok(theirs.received > 0);
    } finally {
      await theirs.close();
    }

    // As systemd's /run/mlxd: root's directory, 0750, the socket chowned to the service user.
    mkdirSync(`${base}/service`, { mode: 0o750 });
    const service = await listen(`${base}/service/mlxd.sock`);
    chownSync(`${base}/service/mlxd.sock`, OTHER, OTHER);
    try {
      const err = await connect({ socket: `${base}/service/mlxd.sock`, fallback: false, handshakeTimeoutMs: 300 }).catch((e) => e);
      assert.ok(err instanceof ConnectionClosedError, String(err));
      assert.equal(service.connections, 1);
      assert.ok(service.received > 0);
    } finally {
      await service.close();
    }
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});
