"""gpt2kit in one page: tokenize, load, run, generate, stream, embed, fine-tune, save — all offline.

    python examples/quickstart.py                 # the bundled demo model (gpt2kit-demo)
    python examples/quickstart.py --model DIR     # a real checkpoint folder (e.g. a downloaded gpt2)
    python examples/quickstart.py --out tuned/    # keep the fine-tuned model (default: a temporary folder,
                                                  # removed when the script ends)

gpt2kit-demo is a small GPT-2 (4 layers x 224, GPT-2's vocabulary) trained from scratch on WordNet's
dictionary glosses: it writes definition-like English, it is a demo, not GPT-2.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile

import torch

import gpt2kit
from gpt2kit import AutoTokenizer, GPT2LMHeadModel, GPT2Model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="gpt2kit-demo", help="a GPT-2 checkpoint folder (default: gpt2kit-demo)"
    )
    ap.add_argument(
        "--out", help="where to save the fine-tuned model (default: a temporary folder, removed at the end)"
    )
    args = ap.parse_args()
    folder = args.model

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
    batch = tok(["guitar (noun):", "run (verb):"], return_tensors="pt", padding=True)
    ids = lm.generate(**batch, max_new_tokens=12, pad_token_id=tok.eos_token_id)
    for text in tok.batch_decode(ids, skip_special_tokens=True):
        print("greedy:", repr(text))
    torch.manual_seed(0)
    ids = lm.generate(**batch, max_new_tokens=12, do_sample=True, top_p=0.9, temperature=0.8)
    print("sampled:", repr(tok.decode(ids[1], skip_special_tokens=True)))
    print("stream: ", end="")
    for piece in gpt2kit.stream(lm, tok, "ocean (noun):", max_new_tokens=12):
        print(piece, end="", flush=True)
    print()

    # Language-model loss, as in fine-tuning
    enc = tok(["kettle (noun): a metal pot for boiling water"], return_tensors="pt")
    with torch.no_grad():
        print("loss:", float(lm(**enc, labels=enc["input_ids"]).loss))

    # Features for your own model: one vector per text
    if hasattr(gpt2kit, "Embedder"):
        embedder = gpt2kit.Embedder.from_pretrained(folder, pooling="mean")
        vectors = embedder.embed(["first text", "a second, longer text to embed"])
        print("embeddings:", vectors.shape, vectors.dtype)

    # Fine-tuning: a few steps on your own texts; the output folder is one transformers also loads
    from gpt2kit.training import Trainer, TrainingConfig, texts_dataset

    data = texts_dataset(
        ["kite (noun): a toy that flies on a long string in the wind"] * 8, tok, block_size=16
    )
    # A temporary folder unless --out is given: the quickstart leaves nothing behind in /tmp
    if args.out:
        out_folder = contextlib.nullcontext(args.out)
    else:
        out_folder = tempfile.TemporaryDirectory(prefix="quickstart-finetuned-")
    with out_folder as out:
        config = TrainingConfig(output_dir=out, max_steps=3, batch_size=4, lr=1e-4, progress=False)
        result = Trainer(lm, data, config=config, tokenizer=tok).fit()
        where = out if args.out else f"{out} (temporary, removed at exit; --out DIR keeps it)"
        print(f"fine-tuned {result.steps} steps, loss {result.train_loss:.3f}, saved to {where}")
        # The saved folder is a checkpoint like any other: load it back and use it
        tuned = GPT2LMHeadModel.from_pretrained(out)
        ids = tuned.generate(**tok("kite (noun):", return_tensors="pt"), max_new_tokens=8)
        print("reloaded:", repr(tok.decode(ids[0], skip_special_tokens=True)))


if __name__ == "__main__":
    main()
