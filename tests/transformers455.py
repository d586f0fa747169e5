"""The transformers 4.55 oracle, run in its own interpreter: contrastive search, group beam search,
constrained beam search and DoLa left transformers' generate() in 4.56, so their reference is the last
release that ran them.

Run with that interpreter (not imported by the tests' own Python, which has transformers 4.57):
    python tests/transformers455.py < request.json > reply.json
request: {"model": folder, "cases": [{"input_ids", "attention_mask", "kwargs", "seed", "constraints"}]};
each case's kwargs go to generate() (plus return_dict_in_generate=True); constraints, when given, are
[["phrasal", ids] or ["disjunctive", [ids, ...]], ...]. The reply lists per case the sequences and, where
present, sequences_scores, beam_indices and scores, as lists.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    request = json.load(sys.stdin)
    model = transformers.GPT2LMHeadModel.from_pretrained(request["model"], attn_implementation="eager").eval()
    replies = []
    for case in request["cases"]:
        kwargs = dict(case.get("kwargs", {}))
        if case.get("constraints"):
            kinds = {
                "phrasal": transformers.PhrasalConstraint,
                "disjunctive": transformers.DisjunctiveConstraint,
            }
            kwargs["constraints"] = [kinds[kind](ids) for kind, ids in case["constraints"]]
        ids = torch.tensor(case["input_ids"])
        mask = torch.tensor(case["attention_mask"]) if case.get("attention_mask") is not None else None
        if case.get("seed") is not None:
            torch.manual_seed(case["seed"])
        try:
            with torch.no_grad():
                out = model.generate(
                    ids, attention_mask=mask, return_dict_in_generate=True, trust_remote_code=True, **kwargs
                )
        except Exception as e:  # the test compares the error too
            replies.append({"error": f"{type(e).__name__}: {e}"})
            continue
        reply = {"sequences": out.sequences.tolist()}
        for name in ("sequences_scores", "beam_indices"):
            value = getattr(out, name, None)
            if value is not None:
                reply[name] = value.tolist()
        if getattr(out, "scores", None) is not None:
            reply["scores"] = [s.tolist() for s in out.scores]
        replies.append(reply)
    json.dump({"version": transformers.__version__, "replies": replies}, sys.stdout)


if __name__ == "__main__":
    main()
