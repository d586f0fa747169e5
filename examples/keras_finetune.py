"""Fine-tune GPT-2 with Keras 3 (PyTorch backend), the way transformers' TensorFlow tutorials do it, offline.

The tutorials' code runs unchanged but for the import: TFGPT2LMHeadModel comes from gpt2kit.keras, and
TensorFlow is not needed. The steps:

1. Tokenize texts and cut them into blocks of block_size + 1 tokens; x = block[:-1], y = block[1:] (the
   model's logits at position t are scored against token t+1).
2. compile() with Adam, SparseCategoricalCrossentropy(from_logits=True) and an accuracy metric; fit() with
   validation data, EarlyStopping and ModelCheckpoint.
3. generate() before and after, and save_pretrained(): a folder transformers' GPT2LMHeadModel and gpt2kit
   both load.

    pip install "gpt2kit[keras]"                   # Keras 3 and its small dependencies, no TensorFlow
    python examples/keras_finetune.py              # the bundled demo model (gpt2kit-demo), ~1 min on 2 cores
    python examples/keras_finetune.py --model DIR --text corpus.txt --epochs 3 --out tuned/

Without --text the script trains on a few made-up dictionary entries in the style gpt2kit-demo was trained
on (`word (part of speech): definition`), so a few epochs visibly change what it writes for them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported; gpt2kit.keras would set it too

import keras  # noqa: E402
import numpy as np  # noqa: E402

from gpt2kit import AutoTokenizer  # noqa: E402
from gpt2kit.keras import TFGPT2LMHeadModel  # noqa: E402  (transformers: from transformers import ...)

ENTRIES = [
    "glimmerfish (noun): a small silver fish that glows faintly in deep water",
    "snorkelate (verb): breathe through a tube while swimming face down",
    "breadwright (noun): a person who bakes bread for a whole village",
    "moonsick (adjective): unable to sleep on nights with a full moon",
    "puddlejump (verb): cross a wet street by leaping from stone to stone",
    "inkwell (noun): a small pot holding ink for a dip pen",
    "clatterbox (noun): a wooden toy that rattles when shaken",
    "frostwhistle (noun): the thin sound of wind through frozen branches",
]


def blocks_from_texts(texts: list[str], tok, block_size: int) -> np.ndarray:
    """All texts' tokens end to end (each closed by eos), cut into rows of block_size + 1 tokens."""
    ids: list[int] = []
    for text in texts:
        ids += tok(text)["input_ids"] + [tok.eos_token_id]
    n = len(ids) // (block_size + 1)
    if n < 2:
        raise SystemExit(f"{len(ids)} tokens make fewer than 2 blocks of {block_size + 1}; give more text")
    return np.array(ids[: n * (block_size + 1)], dtype=np.int64).reshape(n, block_size + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="gpt2kit-demo", help="a GPT-2 checkpoint folder (default: gpt2kit-demo)"
    )
    ap.add_argument("--text", help="a text file, one example per line (default: built-in dictionary entries)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument(
        "--out", help="where to save the fine-tuned model (default: a temporary folder, removed at the end)"
    )
    args = ap.parse_args()
    keras.utils.set_random_seed(0)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = TFGPT2LMHeadModel.from_pretrained(args.model)

    if args.text:
        with open(args.text, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    else:
        texts = ENTRIES * 4
    blocks = blocks_from_texts(texts, tok, args.block_size)
    np.random.default_rng(0).shuffle(blocks)
    n_val = max(1, len(blocks) // 10)
    x, y = blocks[:, :-1], blocks[:, 1:]
    train, val = (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val])
    print(f"{len(blocks)} blocks of {args.block_size} tokens: {len(train[0])} train, {n_val} validation")

    prompt = tok(["glimmerfish (noun):"], return_tensors="np")
    before = model.generate(prompt["input_ids"], attention_mask=prompt["attention_mask"], max_new_tokens=14)
    print("before:", repr(tok.decode(before[0], skip_special_tokens=True)))

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.Adam(args.lr),
        loss=loss,  # transformers' TF tutorials also write [loss, *[None] * model.config.n_layer]: accepted
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    )
    # A temporary folder unless --out is given: the example leaves nothing behind in /tmp
    if args.out:
        out_folder = contextlib.nullcontext(args.out)
    else:
        out_folder = tempfile.TemporaryDirectory(prefix="keras-finetuned-")
    with out_folder as out:
        history = model.fit(
            *train,
            validation_data=val,
            batch_size=args.batch_size,
            epochs=args.epochs,
            callbacks=[
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True),
                keras.callbacks.ModelCheckpoint(
                    os.path.join(out, "checkpoints", "best.weights.h5"),
                    monitor="val_loss",
                    save_best_only=True,
                    save_weights_only=True,
                ),
            ],
            verbose=2,
        ).history
        print("val_loss per epoch:", [round(v, 3) for v in history["val_loss"]])

        after = model.generate(
            prompt["input_ids"], attention_mask=prompt["attention_mask"], max_new_tokens=14
        )
        print("after: ", repr(tok.decode(after[0], skip_special_tokens=True)))

        model.save_pretrained(out)
        tok.save_pretrained(out)
        where = out if args.out else f"{out} (temporary, removed at exit; --out DIR keeps it)"
        print(f"saved to {where} (transformers.GPT2LMHeadModel.from_pretrained and gpt2kit both load it)")


if __name__ == "__main__":
    main()
