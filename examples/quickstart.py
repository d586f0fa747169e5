"""gpt2kit in one page: tokenize, load, run, generate, stream, embed, save — all offline.

    python examples/quickstart.py                 # a small random-weight GPT-2 built here
    python examples/quickstart.py --model DIR     # a real checkpoint folder (e.g. a downloaded gpt2)

Without --model the script builds a 4-layer GPT-2 with random weights and GPT-2's real vocabulary in
./quickstart-model: every call below works the same on it, but its text is gibberish — it is not GPT-2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import gpt2kit
from gpt2kit import AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Model


def build_random_model(folder: Path) -> Path:
    if not (folder / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4))
        model.save_pretrained(folder)
        gpt2kit.GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a GPT-2 checkpoint folder (default: build a random one)")
    args = ap.parse_args()
    folder = args.model or build_random_model(Path("quickstart-model"))

    tok = AutoTokenizer.from_pretrained(folder)
    print("tokens:", tok("Hello world")["input_ids"])  # [15496, 995], GPT-2's ids

    # Features: hidden states of the trunk
    trunk = GPT2Model.from_pretrained(folder)
    with torch.inference_mode():
        out = trunk(**tok(["Hello, my dog is cute"], return_tensors="pt"), output_hidden_states=True)
    print("last_hidden_state:", tuple(out.last_hidden_state.shape), "layers:", len(out.hidden_states))

    # Generation: greedy and sampled, batched with left padding, then streamed
    lm = GPT2LMHeadModel.from_pretrained(folder)
    tok.padding_side, tok.pad_token = "left", tok.eos_token
    batch = tok(["The weather today", "Once upon a time, a"], return_tensors="pt", padding=True)
    ids = lm.generate(**batch, max_new_tokens=12, pad_token_id=tok.eos_token_id)
    for text in tok.batch_decode(ids, skip_special_tokens=True):
        print("greedy:", repr(text))
    torch.manual_seed(0)
    ids = lm.generate(**batch, max_new_tokens=12, do_sample=True, top_p=0.9, temperature=0.8)
    print("sampled:", repr(tok.decode(ids[1], skip_special_tokens=True)))
    print("stream: ", end="")
    for piece in gpt2kit.stream(lm, tok, "In a distant galaxy", max_new_tokens=12):
        print(piece, end="", flush=True)
    print()

    # Language-model loss, as in fine-tuning
    enc = tok(["A short training sentence."], return_tensors="pt")
    with torch.no_grad():
        print("loss:", float(lm(**enc, labels=enc["input_ids"]).loss))

    # Features for your own model: one vector per text
    if hasattr(gpt2kit, "Embedder"):
        embedder = gpt2kit.Embedder.from_pretrained(folder, pooling="mean")
        vectors = embedder.embed(["first text", "a second, longer text to embed"])
        print("embeddings:", vectors.shape, vectors.dtype)

    lm.save_pretrained("quickstart-model-copy")  # a folder transformers also loads
    print("saved to quickstart-model-copy/")


if __name__ == "__main__":
    main()
