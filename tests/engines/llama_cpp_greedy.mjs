// Greedy decoding of a GGUF file with llama.cpp, through the prebuilt binaries of the npm package
// node-llama-cpp: token ids in, token ids out, no tokenizer involved.
//
//   node tests/engines/llama_cpp_greedy.mjs MODEL.gguf '[[ids...], ...]' NEW_TOKENS
//
// Prints {"tokens": [[...], ...], "version": "..."} on stdout: for each prompt, the NEW_TOKENS ids llama.cpp
// picks at temperature 0 (argmax), end-of-text included when it comes (the caller compares up to it). The
// prompts run one after another in one sequence, its history cleared between them. The package is looked up in
// GPT2KIT_NODE_MODULES (a node_modules folder), else in .node/node_modules at the repository root.
import { importPackage } from "./resolve.mjs";

const [modelPath, idsJson, newArg] = process.argv.slice(2);
if (!modelPath || !idsJson || !newArg) {
    console.error("usage: llama_cpp_greedy.mjs MODEL.gguf '[[ids...], ...]' NEW_TOKENS");
    process.exit(2);
}
const prompts = JSON.parse(idsJson);
const wanted = Number(newArg);

const { lib, version } = await importPackage("node-llama-cpp");
// CPU only and never a source build: the prebuilt llama.cpp binary or nothing.
const llama = await lib.getLlama({ gpu: false, build: "never", logLevel: lib.LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const context = await model.createContext({
    contextSize: Math.max(...prompts.map((p) => p.length + wanted), 32),
    batchSize: Math.max(...prompts.map((p) => p.length), 8),
    threads: 1,
    sequences: 1,
});
const sequence = context.getSequence();
const tokens = [];
for (const prompt of prompts) {
    await sequence.clearHistory();
    const picked = [];
    if (wanted > 0) {
        // temperature 0: llama.cpp's greedy sampler; the generator feeds each picked token back itself.
        for await (const token of sequence.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
            picked.push(Number(token));
            if (picked.length >= wanted) break;
        }
    }
    tokens.push(picked);
}
await context.dispose();
await model.dispose();
await llama.dispose();
process.stdout.write(JSON.stringify({ tokens, version }) + "\n");
