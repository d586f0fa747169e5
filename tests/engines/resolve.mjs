// Finds an npm package installed outside the repository's own tree: in GPT2KIT_NODE_MODULES (a node_modules
// folder) or else in .node/node_modules at the repository root, the git-ignored folder README.md (Export)
// installs into. Exits with status 3 and a message on stderr when the package is not there, so that the
// Python tests can skip with the reason.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

export function nodeModules() {
    const fromEnv = process.env.GPT2KIT_NODE_MODULES;
    if (fromEnv) return resolve(fromEnv);
    return resolve(here, "..", "..", ".node", "node_modules");
}

export async function importPackage(name) {
    const folder = nodeModules();
    const manifest = join(folder, name, "package.json");
    if (!existsSync(manifest)) {
        console.error(`${name} is not installed in ${folder} (see README.md, "Checking exports in their engines")`);
        process.exit(3);
    }
    // Resolved as node resolves it for a file inside that folder ("node" condition of the exports map).
    const require = createRequire(join(folder, "noop.js"));
    let entry = require.resolve(name);
    const mjs = entry.replace(/\.cjs$/, ".mjs");
    if (mjs !== entry && existsSync(mjs)) entry = mjs;  // the ES module build where a package ships both
    const module = await import(pathToFileURL(entry).href);
    const version = JSON.parse(readFileSync(manifest, "utf8")).version;
    return { lib: module.default && !Object.keys(module).some((k) => k !== "default") ? module.default : module, version };
}
