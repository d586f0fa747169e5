"""Build the demo model's corpus from WordNet 3.0's glosses (Debian package `wordnet-base`).

WordNet is freely licensed (the WordNet 3.0 license, a permissive BSD-like license: use, copy, modify and
distribute for any purpose, keeping Princeton's copyright notice). Each synset becomes one line:

    guitar (noun): a stringed instrument usually having six strings; played by strumming or plucking

About 117,000 lines and 2.6 million GPT-2 tokens. 2% of the lines (chosen by a hash of the text, so the
split never changes) are held out for validation.

    apt-get install wordnet-base
    python examples/demo_model/prepare_wordnet.py --out demo-data
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}


def synset_lines(wordnet_dir: Path):
    for suffix, pos in POS.items():
        path = wordnet_dir / f"data.{suffix}"
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # the license header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                word = fields[4].replace("_", " ")
                word = word.split("(")[0]  # adjective markers like "big(a)"
                gloss = gloss.strip()
                if gloss:
                    yield f"{word} ({pos}): {gloss}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet", default="/usr/share/wordnet", help="folder with data.noun, data.verb, ...")
    ap.add_argument("--out", default="demo-data", help="writes train.txt and val.txt here")
    ap.add_argument("--val-percent", type=int, default=2)
    args = ap.parse_args()
    src = Path(args.wordnet)
    if not (src / "data.noun").is_file():
        print(
            f"no WordNet data in {src}: run `apt-get install wordnet-base` (Debian/Ubuntu)", file=sys.stderr
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_train = n_val = 0
    with (
        open(out / "train.txt", "w", encoding="utf-8") as train,
        open(out / "val.txt", "w", encoding="utf-8") as val,
    ):
        for line in synset_lines(src):
            bucket = int(hashlib.sha1(line.encode()).hexdigest()[:8], 16) % 100
            if bucket < args.val_percent:
                val.write(line + "\n")
                n_val += 1
            else:
                train.write(line + "\n")
                n_train += 1
    print(f"{n_train} training lines, {n_val} validation lines in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
