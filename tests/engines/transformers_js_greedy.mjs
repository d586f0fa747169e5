// Greedy generation with transformers.js (npm @huggingface/transformers, ONNX Runtime for node underneath)
// from a local model folder laid out as the Hub has it: MODEL_DIR/config.json and MODEL_DIR/onnx/*.onnx, as
// `gpt2kit export onnx --model MODEL_DIR` writes them. Token ids in, token ids out.
//
//   node tests/engines/transformers_js_greedy.mjs MODEL_DIR '[[ids...], ...]' NEW_TOKENS [DTYPE]
//
// DTYPE is transformers.js's: fp32 (onnx/model.onnx, the default) or q8 (onnx/model_quantized.onnx).
// Prints {"tokens": [[...], ...], "version": "...", "dtype": "..."}: for each prompt (one generate() call
// each, batch 1), the new ids generate() picks with do_sample=false, stopping early at end-of-text as
// generate does. Remote downloads are switched off: the
// folder is read from disk or the script fails.
import { basename, dirname, resolve } from "node:path";

import { importPackage } from "./resolve.mjs";

const [modelDir, idsJson, newArg, dtype = "fp32"] = process.argv.slice(2);
if (!modelDir || !idsJson || !newArg) {
    console.error("usage: transformers_js_greedy.mjs MODEL_DIR '[[ids...], ...]' NEW_TOKENS [fp32|q8]");
    process.exit(2);
}
const prompts = JSON.parse(idsJson);
const wanted = Number(newArg);

const { lib, version } = await importPackage("@huggingface/transformers");
const { AutoModelForCausalLM, Tensor, env } = lib;
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useBrowserCache = false;
env.localModelPath = dirname(resolve(modelDir)) + "/";

const model = await AutoModelForCausalLM.from_pretrained(basename(resolve(modelDir)), {
    dtype,
    device: "cpu",
    local_files_only: true,
    session_options: { intraOpNumThreads: 1, interOpNumThreads: 1 },
});
const tokens = [];
for (const prompt of prompts) {
    const ids = new Tensor("int64", BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]);
    const mask = new Tensor("int64", new BigInt64Array(prompt.length).fill(1n), [1, prompt.length]);
    const output = await model.generate({
        input_ids: ids,
        attention_mask: mask,
        max_new_tokens: wanted,
        do_sample: false,
    });
    tokens.push(output.tolist()[0].slice(prompt.length).map(Number));
}
await model.dispose();
process.stdout.write(JSON.stringify({ tokens, version, dtype }) + "\n");
