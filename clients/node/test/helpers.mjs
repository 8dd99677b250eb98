export const repoRoot = new URL("../../..", import.meta.url).pathname.replace(/\/$/, "");
