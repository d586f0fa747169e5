"""Turn a `gpt2kit train` output folder into the bundled `gpt2kit-demo` model: fp16 safetensors + config.

    python examples/demo_model/ship.py demo-out src/gpt2kit/models/gpt2kit-demo

Writes config.json, generation_config.json and model.safetensors (fp16, the tied LM head stored once) and
refuses to write more than 30 MB of weights, the budget for shipping a model inside the package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

LIMIT_BYTES = 30 * 10**6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trained", help="the folder `gpt2kit train` wrote")
    ap.add_argument("dest", help="where the demo model goes (src/gpt2kit/models/gpt2kit-demo)")
    ap.add_argument("--note", default="", help="a line for the model card (e.g. validation perplexity)")
    args = ap.parse_args()

    import torch

    from gpt2kit import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(args.trained, dtype=torch.float16)
    dest = Path(args.dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    if size > LIMIT_BYTES:
        shutil.rmtree(tmp)
        print(
            f"the weights are {size / 1e6:.1f} MB, over the {LIMIT_BYTES / 1e6:.0f} MB budget",
            file=sys.stderr,
        )
        return 2
    training = Path(args.trained) / "training_config.json"
    if training.exists():
        shutil.copy(training, tmp / "training_config.json")
    card = {
        "name": "gpt2kit-demo",
        "what": "a small GPT-2 trained from scratch on WordNet 3.0 glosses; a demo, not GPT-2",
        "note": args.note,
    }
    (tmp / "gpt2kit-demo.json").write_text(json.dumps(card, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"wrote {dest} ({size / 1e6:.1f} MB of fp16 weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
