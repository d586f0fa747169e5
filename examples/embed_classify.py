"""GPT-2 features -> a scikit-learn classifier, end to end and offline.

1. Build a small labelled text set: sentences from shared templates about three topics (sport, cooking,
   computing), so that only the topic words tell the classes apart.
2. Embed every sentence with gpt2kit's Embedder (mean of the last hidden state over the sentence's tokens).
3. Fit a LogisticRegression on 70% of them and score it on the other 30%.

    pip install scikit-learn          # for this example only; gpt2kit does not need it
    python examples/embed_classify.py                       # the bundled demo model (gpt2kit-demo)
    python examples/embed_classify.py --model DIR           # a real checkpoint folder (e.g. a downloaded gpt2)

gpt2kit-demo is a small GPT-2 (4 layers x 224, GPT-2's vocabulary) trained on WordNet's dictionary
glosses: it runs offline, and its features separate the topics well above chance (1/3). With real GPT-2
weights the features carry more meaning, and texts need not share topic words to be grouped.
"""

from __future__ import annotations

import argparse
import random
import time

TOPICS = {
    "sport": (
        ["the striker", "our goalkeeper", "the coach", "the referee", "a young sprinter", "the home team"],
        [
            "scored in the final minute",
            "trained for the marathon",
            "won the championship",
            "missed a penalty",
            "broke the national record",
            "lost the semifinal",
        ],  # fmt: skip
    ),
    "cooking": (
        ["the chef", "my grandmother", "the baker", "a line cook", "the pastry team", "our neighbour"],
        [
            "simmered the tomato sauce",
            "kneaded the bread dough",
            "roasted garlic and onions",
            "whisked eggs into the batter",
            "seasoned the soup with thyme",
            "burned the caramel",
        ],  # fmt: skip
    ),
    "computing": (
        [
            "the compiler",
            "our database server",
            "the kernel developer",
            "a junior programmer",
            "the test suite",
            "the network router",
        ],  # fmt: skip
        [
            "crashed after the update",
            "cached every query in memory",
            "refactored the parser",
            "dropped packets under load",
            "compiled the code in seconds",
            "leaked file descriptors",
        ],  # fmt: skip
    ),
}
TEMPLATES = [
    "{s} {v}.",
    "Yesterday {s} {v}, and nobody was surprised.",
    "I heard that {s} {v} last week.",
    "According to the report, {s} {v} again.",
    "Nobody expected that {s} {v}.",
    "{s} {v}, then went home early.",
]


def build_dataset(per_topic: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for topic, (subjects, verbs) in TOPICS.items():
        for _ in range(per_topic):
            text = rng.choice(TEMPLATES).format(s=rng.choice(subjects), v=rng.choice(verbs))
            texts.append(text[0].upper() + text[1:])
            labels.append(topic)
    return texts, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="gpt2kit-demo", help="a GPT-2 checkpoint folder (default: gpt2kit-demo)"
    )
    ap.add_argument("--per-topic", type=int, default=100, help="sentences per topic (default: 100)")
    ap.add_argument("--layer", type=int, default=-1, help="hidden layer to pool (default: -1, the last)")
    ap.add_argument(
        "--pooling", default="mean", choices=["mean", "max", "last", "first"], help="default: mean"
    )
    args = ap.parse_args()

    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from None

    from gpt2kit import Embedder

    texts, labels = build_dataset(args.per_topic)
    embedder = Embedder.from_pretrained(args.model, layer=args.layer, pooling=args.pooling)
    t0 = time.perf_counter()
    X = embedder.embed(texts)
    print(
        f"embedded {len(texts)} texts with {args.model} -> {X.shape} in {time.perf_counter() - t0:.1f} s "
        f"({embedder.last_stats.tokens} tokens)"
    )

    X_train, X_test, y_train, y_test = train_test_split(
        X, labels, test_size=0.3, random_state=0, stratify=labels
    )
    scaler = StandardScaler().fit(X_train)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(X_train), y_train)
    print(f"train accuracy {clf.score(scaler.transform(X_train), y_train):.3f}")
    print(
        f"test accuracy  {clf.score(scaler.transform(X_test), y_test):.3f}  (chance: {1 / len(TOPICS):.3f})"
    )
    print("example:", repr(texts[0]), "->", clf.predict(scaler.transform(embedder.embed(texts[:1])))[0])


if __name__ == "__main__":
    main()
