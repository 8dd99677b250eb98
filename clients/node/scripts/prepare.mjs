// Builds dist/ with the pinned TypeScript (npm's `prepare`). npm runs this in place when a
// project installs the package from a checkout (`npm install ./clients/node`), where this
// package's devDependencies are not installed: they are then installed here first, from
// package-lock.json, with npm itself (so a fresh clone needs only the npm registry).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");

if (!existsSync(tsc)) {
  // The npm that runs this script (npm_execpath), else npm on PATH.
  const npm = process.env.npm_execpath;
  const [command, args] = npm ? [process.execPath, [npm]] : ["npm", []];
  // --include=dev: an outer `npm install --omit=dev` must not omit the compiler here;
  // --ignore-scripts: no recursion into this script.
  execFileSync(command, [...args, "ci", "--include=dev", "--ignore-scripts", "--no-audit", "--no-fund"], {
    cwd: root,
    stdio: ["ignore", "inherit", "inherit"],
  });
}
execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.json")], { cwd: root, stdio: "inherit" });
