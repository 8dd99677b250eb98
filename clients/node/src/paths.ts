/**
 * Where the daemon listens, and whether to trust what listens there.
 *
 * The socket is found as the Rust client finds it (`proto/src/paths.rs`): `$MLXD_SOCKET`;
 * else the first of the per-user default (`$XDG_RUNTIME_DIR/mlxd/mlxd.sock` when
 * `XDG_RUNTIME_DIR` is absolute, else `/tmp/mlxd-$UID/mlxd.sock`), the LaunchAgent's socket
 * (macOS) and the system service's socket that exists in a directory owned by this user or
 * root. A default whose directory belongs to someone else is passed over (anyone can create
 * `/tmp/mlxd-$UID` first), with a notice.
 *
 * Trust: the Rust client reads the server's uid from the kernel (SO_PEERCRED) once
 * connected. Node has no API for a Unix socket's peer credentials, so this client judges
 * the socket's *path* instead, before it connects: who could have put a socket there
 * ({@link checkServer} has the rule). It cannot tell who holds the listening end of a
 * socket file that a trusted user made or handed on.
 *
 * @module
 */

import { lstatSync, readlinkSync, statSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";

import { UntrustedServerError } from "./errors.js";

/** Environment variable naming the socket path. */
export const SOCKET_ENV = "MLXD_SOCKET";
/** Environment variable with uids (comma-separated) whose daemons this client also trusts. */
export const TRUSTED_UIDS_ENV = "MLXD_TRUSTED_UIDS";
/** Where the system service listens. */
export const SYSTEM_SOCKET_PATH = process.platform === "darwin" ? "/var/run/mlxd.sock" : "/run/mlxd/mlxd.sock";

/** A default socket not considered because someone else owns its directory. */
export interface PassedOver {
  path: string;
  directoryOwner: number;
}

export interface SocketChoice {
  path: string;
  /** Given by the caller or `$MLXD_SOCKET` (never passed over). */
  explicit: boolean;
  passedOver: PassedOver[];
}

/** This process's effective uid: whose daemon it trusts (as the Rust client's check). */
export function currentUid(): number {
  return process.geteuid?.() ?? process.getuid?.() ?? 0;
}

/** This process's real uid: whose default socket it looks for (as the Rust client). */
function realUid(): number {
  return process.getuid?.() ?? 0;
}

/** The per-user default: `$XDG_RUNTIME_DIR/mlxd/mlxd.sock`, else `/tmp/mlxd-$UID/mlxd.sock`. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env, uid = realUid()): string {
  const explicit = env[SOCKET_ENV];
  if (explicit) return explicit;
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime && isAbsolute(runtime)) return join(runtime, "mlxd", "mlxd.sock");
  return join(`/tmp/mlxd-${uid}`, "mlxd.sock");
}

/** Where to connect when the caller names no socket (see the module doc). */
export function resolveSocketPath(env: NodeJS.ProcessEnv = process.env, uid = realUid()): SocketChoice {
  const user = defaultSocketPath(env, uid);
  if (env[SOCKET_ENV]) return { path: user, explicit: true, passedOver: [] };
  const candidates = [user];
  const home = env.HOME;
  if (process.platform === "darwin" && home && isAbsolute(home)) {
    candidates.push(join(home, "Library/Application Support/mlxd/mlxd.sock"));
  }
  candidates.push(SYSTEM_SOCKET_PATH);

  const passedOver: PassedOver[] = [];
  const usable: string[] = [];
  for (const candidate of candidates) {
    // lstat: a link someone else put in place of the directory counts as theirs.
    const directoryOwner = ownerOf(dirname(candidate), true);
    if (directoryOwner !== undefined && directoryOwner !== uid && directoryOwner !== 0) {
      passedOver.push({ path: candidate, directoryOwner });
    } else {
      usable.push(candidate);
    }
  }
  const path = usable.find((p) => ownerOf(p) !== undefined) ?? usable[0] ?? user;
  return { path, explicit: false, passedOver };
}

function ownerOf(path: string, link = false): number | undefined {
  try {
    return (link ? lstatSync(path) : statSync(path)).uid;
  } catch {
    return undefined;
  }
}

/** `$MLXD_TRUSTED_UIDS`; an entry that is not a uid is skipped with a notice. */
export function trustedUidsFromEnv(env: NodeJS.ProcessEnv = process.env, log: (line: string) => void = warn): number[] {
  const value = env[TRUSTED_UIDS_ENV];
  if (!value) return [];
  const uids: number[] = [];
  for (const entry of value.split(",").map((e) => e.trim()).filter((e) => e !== "")) {
    if (/^\d+$/.test(entry) && Number(entry) <= 0xffff_ffff) uids.push(Number(entry));
    else log(`mlxd-client: ignoring ${JSON.stringify(entry)} in ${TRUSTED_UIDS_ENV}: not a uid`);
  }
  return uids;
}

function warn(line: string): void {
  process.stderr.write(line + "\n");
}

/** What {@link checkServer} needs to know of a path, without following it (`lstat`). */
export interface FileInfo {
  kind: "directory" | "symlink" | "socket" | "other";
  uid: number;
  /** Permission bits, with the sticky bit (0o1000). */
  mode: number;
  dev: bigint;
  ino: bigint;
}

/** The file system as {@link checkServer} sees it; tests may pass their own. */
export interface FileSystem {
  /** Like `lstat`: throws an errno error (ENOENT, EACCES, ...) for what it cannot see. */
  lstat(path: string): FileInfo;
  readlink(path: string): string;
}

/** The real file system. */
export const realFileSystem: FileSystem = {
  lstat(path) {
    const stats = lstatSync(path, { bigint: true });
    const kind = stats.isDirectory()
      ? "directory"
      : stats.isSymbolicLink()
        ? "symlink"
        : stats.isSocket()
          ? "socket"
          : "other";
    return { kind, uid: Number(stats.uid), mode: Number(stats.mode & 0o7777n), dev: stats.dev, ino: stats.ino };
  },
  readlink: (path) => readlinkSync(path),
};

/** The socket {@link checkServer} found trusted: compare it with a later look. */
export interface TrustedSocket {
  /** The socket's path with every symbolic link resolved. */
  path: string;
  dev: bigint;
  ino: bigint;
}

/** Symbolic links followed at most (Linux's limit). */
const MAX_SYMLINKS = 40;

/**
 * Decides, before connecting, whether whoever could have put a socket at `path` may get
 * this client's requests; throws {@link UntrustedServerError} if not. The rule (README
 * "Security"), walking the path from `/` with `lstat`, links not followed blindly:
 *
 * - every directory on the way must belong to you (`uid`), root or a `trustedUids` uid,
 *   and must not be writable by group or others unless sticky (`/tmp`): then nobody else
 *   can rename, replace or add an entry in it (in a sticky directory: but their own);
 * - a symbolic link on the way must belong to you, root or a trusted uid (it sits in a
 *   directory that passed, so nobody else could have made or swapped it); its target is
 *   then walked the same way. Another user's link (`/tmp/mlxd-$UID` made by someone else)
 *   is refused;
 * - the file must be a socket. It is trusted if it belongs to you, root or a trusted uid,
 *   or, whoever owns it, if its directory is not writable by group or others at all: then
 *   only the directory's (trusted) owner could have made it — so the system service's
 *   `/run/mlxd/mlxd.sock`, which systemd (root) creates in a root directory and hands to
 *   user `mlxd` (`SocketUser=mlxd`), is trusted.
 *
 * A path the walk cannot see (ENOENT, EACCES, ENOTDIR, ELOOP) throws that errno error
 * (no daemon there, or none reachable), not {@link UntrustedServerError}.
 *
 * Returns the socket's identity: {@link connect} looks again once connected and refuses
 * a socket that changed meanwhile.
 */
export function checkServer(
  path: string,
  trustedUids: readonly number[],
  uid = currentUid(),
  fs: FileSystem = realFileSystem,
): TrustedSocket {
  const trusted = (owner: number) => owner === uid || owner === 0 || trustedUids.includes(owner);
  const refuse = (owner: number, reason: string): never => {
    throw new UntrustedServerError(path, owner, reason);
  };
  const hint = (owner: number) =>
    `not to you (uid ${uid}) or root; if that is intended, add ${owner} to ${TRUSTED_UIDS_ENV}`;
  const mode = (info: FileInfo) => (info.mode & 0o7777).toString(8).padStart(4, "0");
  const othersMayWrite = (info: FileInfo) => (info.mode & 0o022) !== 0;
  const sticky = (info: FileInfo) => (info.mode & 0o1000) !== 0;
  const checkDirectory = (dir: string, info: FileInfo) => {
    if (!trusted(info.uid)) refuse(info.uid, `the directory ${dir} on its path belongs to uid ${info.uid}, ${hint(info.uid)}`);
    if (othersMayWrite(info) && !sticky(info)) {
      refuse(
        info.uid,
        `the directory ${dir} on its path (mode ${mode(info)}) is writable by group or others without the sticky bit, ` +
          "so anyone could have put or swapped a socket there",
      );
    }
  };

  const rootInfo = fs.lstat("/");
  checkDirectory("/", rootInfo);
  // Components still to walk, and the real (link-free, checked) directories walked so far.
  const pending = (isAbsolute(path) ? path : join(process.cwd(), path)).split("/");
  const real: string[] = [];
  let parentInfo = rootInfo;
  let links = 0;
  let last: { path: string; info: FileInfo } | undefined;
  while (pending.length > 0) {
    const name = pending.shift()!;
    if (name === "" || name === ".") continue;
    if (name === "..") {
      // The parent of a checked directory was checked on the way down.
      real.pop();
      parentInfo = fs.lstat("/" + real.join("/"));
      last = undefined;
      continue;
    }
    const current = "/" + [...real, name].join("/");
    const info = fs.lstat(current);
    if (info.kind === "symlink") {
      if (!trusted(info.uid)) {
        refuse(info.uid, `${current} on its path is a symbolic link of uid ${info.uid}, ${hint(info.uid)}`);
      }
      if (++links > MAX_SYMLINKS) throw errnoError("ELOOP", `too many symbolic links in ${path}`);
      const target = fs.readlink(current);
      if (isAbsolute(target)) {
        real.length = 0;
        parentInfo = rootInfo;
      }
      pending.unshift(...target.split("/"));
      last = undefined;
      continue;
    }
    const more = pending.some((c) => c !== "" && c !== ".");
    if (more) {
      if (info.kind !== "directory") throw errnoError("ENOTDIR", `${current} on the path ${path} is not a directory`);
      checkDirectory(current, info);
      parentInfo = info;
      last = undefined;
    } else {
      last = { path: current, info };
    }
    real.push(name);
  }
  if (last === undefined) refuse(-1, "it is not a socket");
  const socket = last!;
  if (socket.info.kind !== "socket") refuse(socket.info.uid, "it is not a socket");
  const directory = dirname(socket.path);
  if (!trusted(socket.info.uid) && othersMayWrite(parentInfo)) {
    refuse(
      socket.info.uid,
      `the socket belongs to uid ${socket.info.uid}, ${hint(socket.info.uid)}; and its directory ${directory} ` +
        `(mode ${mode(parentInfo)}) lets others create files, so uid ${socket.info.uid} may have made it`,
    );
  }
  return { path: socket.path, dev: socket.info.dev, ino: socket.info.ino };
}

function errnoError(code: string, message: string): NodeJS.ErrnoException {
  const error: NodeJS.ErrnoException = new Error(`${code}: ${message}`);
  error.code = code;
  return error;
}
