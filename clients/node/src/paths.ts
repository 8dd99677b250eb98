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
 * the socket *file* instead, before it sends anything: it must be owned by this user, root
 * or a uid in `$MLXD_TRUSTED_UIDS`, and so must its directory, which must not be writable
 * by group or others unless sticky (so nobody else could have put or swapped it there).
 * That holds the same users out as long as the daemon's own directory rules hold; it
 * cannot tell who holds the listening end of a socket file a trusted user made.
 *
 * @module
 */

import { realpathSync, statSync, type Stats } from "node:fs";
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
    const directoryOwner = ownerOf(dirname(candidate));
    if (directoryOwner !== undefined && directoryOwner !== uid && directoryOwner !== 0) {
      passedOver.push({ path: candidate, directoryOwner });
    } else {
      usable.push(candidate);
    }
  }
  const path = usable.find((p) => ownerOf(p) !== undefined) ?? usable[0] ?? user;
  return { path, explicit: false, passedOver };
}

function ownerOf(path: string): number | undefined {
  try {
    return statSync(path).uid;
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

/**
 * Throws {@link UntrustedServerError} unless the socket at `path` and its directory belong
 * to this user, root or a trusted uid, and the directory is not writable by others.
 */
export function checkServer(path: string, trustedUids: readonly number[], uid = currentUid()): void {
  const trusted = (owner: number) => owner === uid || owner === 0 || trustedUids.includes(owner);
  const hint = (owner: number) =>
    `not by you (uid ${uid}) or root; if that is intended, add ${owner} to ${TRUSTED_UIDS_ENV}`;
  let socket: Stats;
  let directory: string;
  let directoryStats: Stats;
  try {
    socket = statSync(path);
    directory = dirname(realpathSync(path));
    directoryStats = statSync(directory);
  } catch (err) {
    throw new UntrustedServerError(path, -1, `cannot check who owns it (${(err as Error).message})`);
  }
  if (!socket.isSocket()) throw new UntrustedServerError(path, socket.uid, "it is not a socket");
  if (!trusted(socket.uid)) {
    throw new UntrustedServerError(path, socket.uid, `the socket belongs to uid ${socket.uid}, ${hint(socket.uid)}`);
  }
  if (!trusted(directoryStats.uid)) {
    throw new UntrustedServerError(
      path,
      directoryStats.uid,
      `its directory ${directory} belongs to uid ${directoryStats.uid}, ${hint(directoryStats.uid)}`,
    );
  }
  const sticky = (directoryStats.mode & 0o1000) !== 0;
  if ((directoryStats.mode & 0o022) !== 0 && !sticky) {
    const mode = (directoryStats.mode & 0o7777).toString(8).padStart(4, "0");
    throw new UntrustedServerError(
      path,
      socket.uid,
      `its directory ${directory} (mode ${mode}) is writable by others without the sticky bit, so anyone could have put a socket there`,
    );
  }
}
