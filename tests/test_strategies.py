"""Contrastive search, DoLa, group (diverse) beam search and constrained beam search.

transformers 4.56+ moved these four out of generate() to the Hub, so their oracle is transformers 4.55, run
in its own interpreter (tests/transformers455.py): set GPT2KIT_TRANSFORMERS_455 to that Python, e.g.
    python3 -m venv .venv455 && .venv455/bin/pip install torch==2.13.0 "transformers==4.55.*"
    GPT2KIT_TRANSFORMERS_455=.venv455/bin/python pytest tests/test_strategies.py
(a .venv455/ at the repository root is found without the variable). Tests marked transformers455 skip
without it; the rest (properties, errors, constraint bookkeeping) always run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import gpt2kit
from gpt2kit.generation import ConstraintListState, DisjunctiveConstraint, PhrasalConstraint
from gpt2kit.generation.constraints import constraints_from_config
from hf_oracle import hf_model

ROOT = Path(__file__).resolve().parents[1]
ORACLE = Path(__file__).with_name("transformers455.py")


def oracle_python() -> str | None:
    path = os.environ.get("GPT2KIT_TRANSFORMERS_455") or str(ROOT / ".venv455" / "bin" / "python")
    return path if Path(path).is_file() else None


needs_455 = pytest.mark.skipif(
    oracle_python() is None,
    reason="needs transformers 4.55 in another interpreter: set GPT2KIT_TRANSFORMERS_455=/path/to/python "
    "(a venv with torch and transformers==4.55.*; see this file's docstring)",
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf = hf_model("GPT2LMHeadModel", seed=7)
    folder = tmp_path_factory.mktemp("strategies")
    hf.save_pretrained(folder)
    return folder, gpt2kit.GPT2LMHeadModel.from_pretrained(folder)


def prompts(B=3, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 99, (B, T), generator=g)
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # left padding
    mask[min(1, B - 1), :1] = 0
    return x.masked_fill(mask == 0, 0), mask


# With this checkpoint and these prompts greedy decoding produces 97, 72, 60 and 44 early: as eos they end
# hypotheses mid-way.
BASE = dict(max_new_tokens=12, pad_token_id=0)
CONTRASTIVE = [
    dict(penalty_alpha=0.6, top_k=4),
    dict(penalty_alpha=0.6, top_k=4, eos_token_id=97, output_scores=True),
    dict(penalty_alpha=0.3, top_k=6, eos_token_id=[97, 44], repetition_penalty=1.3),
    dict(penalty_alpha=0.9, top_k=2, no_repeat_ngram_size=2),
]
DOLA = [
    dict(dola_layers="high"),
    dict(dola_layers="low", eos_token_id=97),
    dict(dola_layers=[0, 1], repetition_penalty=1.2, output_scores=True),
]
GROUP = [
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
    dict(num_beams=6, num_beam_groups=3, diversity_penalty=0.5, eos_token_id=97, num_return_sequences=3),
    dict(
        num_beams=4,
        num_beam_groups=2,
        diversity_penalty=2.0,
        eos_token_id=[97, 72],
        length_penalty=0.5,
        early_stopping=True,
    ),
    dict(num_beams=4, num_beam_groups=4, diversity_penalty=1.0, eos_token_id=60, early_stopping="never"),
    # the diversity penalty comes before the repetition penalty (transformers 4.55's order)
    dict(
        num_beams=4,
        num_beam_groups=2,
        diversity_penalty=3.0,
        repetition_penalty=3.0,
        sequence_bias=[[[72], 2.0]],
    ),
]
CONSTRAINED = [
    dict(num_beams=4, force_words_ids=[[5, 6]]),
    dict(num_beams=3, force_words_ids=[[[30, 31], [30, 32]], [40]], eos_token_id=[97, 44]),
    dict(
        num_beams=5, force_words_ids=[[72, 72, 20]], eos_token_id=97, no_repeat_ngram_size=3, max_new_tokens=8
    ),
    dict(
        num_beams=4,
        eos_token_id=97,
        num_return_sequences=2,
        constraints=[["phrasal", [5, 6]], ["disjunctive", [[10, 11], [10, 12, 13], [14]]]],
    ),
    # a disjunctive constraint in progress with several ways on: the case where transformers' copies share
    # their progress list, which changes the banks
    dict(num_beams=4, constraints=[["disjunctive", [[60, 97, 72], [60, 97, 44], [60, 20]]]], eos_token_id=44),
]
CASES = {
    "contrastive": CONTRASTIVE,
    "dola": DOLA,
    "group": GROUP,
    "constrained": CONSTRAINED,
}
CASE_IDS = [(mode, i) for mode, cases in CASES.items() for i in range(len(cases))]


def _with_outputs(kw: dict) -> dict:
    kw = {**BASE, **kw}
    if kw.get("num_beams", 1) > 1:
        kw["output_scores"] = True  # sequences_scores and beam_indices come back too
    return kw


def _constraints(spec):
    kinds = {"phrasal": PhrasalConstraint, "disjunctive": DisjunctiveConstraint}
    return [kinds[kind](ids) for kind, ids in spec]


@pytest.fixture(scope="module")
def oracle(models):
    """Every case through transformers 4.55 in one subprocess: {(mode, i): reply}."""
    python = oracle_python()
    if python is None:
        pytest.skip("transformers 4.55 interpreter not found (GPT2KIT_TRANSFORMERS_455)")
    folder, _ = models
    x, mask = prompts()
    cases = []
    for mode, i in CASE_IDS:
        kw = _with_outputs(CASES[mode][i])
        spec = kw.pop("constraints", None)
        cases.append(dict(input_ids=x.tolist(), attention_mask=mask.tolist(), kwargs=kw, constraints=spec))
    done = subprocess.run(
        [python, str(ORACLE)],
        input=json.dumps({"model": str(folder), "cases": cases}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reply = json.loads(done.stdout)
    assert reply["version"].startswith("4.55"), reply["version"]
    return dict(zip(CASE_IDS, reply["replies"]))


@pytest.mark.transformers455
@needs_455
@pytest.mark.parametrize("mode, i", CASE_IDS, ids=[f"{m}-{i}" for m, i in CASE_IDS])
def test_matches_transformers_455(models, oracle, mode, i):
    _, ours = models
    theirs = oracle[(mode, i)]
    assert "error" not in theirs, theirs
    kw = _with_outputs(CASES[mode][i])
    if "constraints" in kw:
        kw["constraints"] = _constraints(kw["constraints"])
    x, mask = prompts()
    out = ours.generate(x, attention_mask=mask, return_dict_in_generate=True, **kw)
    assert out.sequences.tolist() == theirs["sequences"]
    if "sequences_scores" in theirs:
        torch.testing.assert_close(
            out.sequences_scores, torch.tensor(theirs["sequences_scores"]), atol=1e-5, rtol=1e-5
        )
    if "beam_indices" in theirs:
        assert out.beam_indices.tolist() == theirs["beam_indices"]
    if kw.get("output_scores"):
        assert len(out.scores) == len(theirs["scores"])
        torch.testing.assert_close(out.scores[0], torch.tensor(theirs["scores"][0]), atol=1e-4, rtol=1e-4)
    if mode == "constrained":  # the forced words are really there
        for row in out.sequences.tolist():
            for constraint in constraints_from_config(kw.get("constraints"), kw.get("force_words_ids")):
                state = ConstraintListState([constraint])
                state.reset(row)
                assert state.completed, (row, constraint)


# --- properties that need no oracle -------------------------------------------------------------------------


def test_contrastive_with_alpha_zero_is_greedy(models):
    _, ours = models
    x, mask = prompts()
    greedy = ours.generate(x, attention_mask=mask, **BASE)
    contrastive = ours.generate(x, attention_mask=mask, penalty_alpha=0.0001, top_k=3, **BASE)
    # alpha ~ 0 ranks the candidates by probability alone; penalty_alpha=0 is plain greedy search
    assert torch.equal(greedy, contrastive)
    assert torch.equal(greedy, ours.generate(x, attention_mask=mask, penalty_alpha=0.0, top_k=3, **BASE))


def test_contrastive_returns_the_prompt_cache(models):
    _, ours = models
    x, mask = prompts()
    out = ours.generate(
        x, attention_mask=mask, penalty_alpha=0.6, top_k=4, return_dict_in_generate=True, **BASE
    )
    assert out.past_key_values.get_seq_length() == out.sequences.shape[1] - 1
    assert out.past_key_values[0][0].shape[0] == x.shape[0]


def test_group_beams_differ_across_groups(models):
    _, ours = models
    x, mask = prompts(B=1)
    kw = dict(num_beams=4, num_beam_groups=4, num_return_sequences=4, **BASE)
    plain = ours.generate(x, num_beams=4, num_return_sequences=4, **BASE)
    diverse = ours.generate(x, diversity_penalty=5.0, **kw)
    assert len({tuple(r) for r in diverse.tolist()}) == 4
    assert not torch.equal(plain, diverse)


def test_force_words_appear(models):
    _, ours = models
    x, mask = prompts()
    out = ours.generate(x, attention_mask=mask, num_beams=4, force_words_ids=[[5, 6], [[30], [31]]], **BASE)
    for row in out[:, x.shape[1] :].tolist():
        text = " ".join(map(str, row))
        assert "5 6" in text and (30 in row or 31 in row), row


def test_dola_contrasts_layers(models):
    _, ours = models
    x, mask = prompts()
    greedy = ours.generate(x, attention_mask=mask, **BASE)
    dola = ours.generate(x, attention_mask=mask, dola_layers=[0], **BASE)
    assert dola.shape == greedy.shape and not torch.equal(greedy, dola)


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(force_words_ids=[[5]]), ValueError, "needs num_beams > 1"),
        (dict(force_words_ids=[[5]], num_beams=2, do_sample=True), ValueError, "constrained beam search"),
        (dict(force_words_ids=[5], num_beams=2), ValueError, "force_words_ids has to either be"),
        (dict(constraints=[[5]], num_beams=2), TypeError, "Constraint objects"),
        (dict(num_beams=4, num_beam_groups=3, diversity_penalty=1.0), ValueError, "divisible"),
        (dict(num_beams=4, num_beam_groups=2), ValueError, "should be greater than `0.0`"),
        (
            dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, do_sample=True),
            ValueError,
            "do_sample",
        ),
        (dict(num_beams=4, diversity_penalty=1.0), ValueError, "num_beam_groups > 1"),
        (dict(penalty_alpha=0.6, top_k=4, use_cache=False), ValueError, "use_cache=True"),
        (dict(penalty_alpha=0.6, top_k=4, compile=True), ValueError, "compile="),
        (
            dict(penalty_alpha=0.6, top_k=4, return_dict_in_generate=True, output_attentions=True),
            ValueError,
            "output_attentions",
        ),
        (dict(penalty_alpha=-1.0, top_k=4), ValueError, "penalty_alpha must be"),
        (dict(dola_layers="middle"), ValueError, "dola_layers must be"),
        (dict(dola_layers=[5, 9]), ValueError, "names no layer"),
    ],
)
def test_invalid_combinations_raise(models, kw, error, match):
    _, ours = models
    with pytest.raises(error, match=match):
        ours.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, pad_token_id=0, **kw)


def test_ignored_settings_warn(models, caplog):
    _, ours = models
    x = torch.tensor([[1, 2, 3]])
    with caplog.at_level("WARNING", logger="gpt2kit"):
        beams = ours.generate(x, num_beams=2, dola_layers="high", max_new_tokens=3, pad_token_id=0)
    assert "dola_layers runs with greedy search and sampling only" in caplog.text
    assert torch.equal(beams, ours.generate(x, num_beams=2, max_new_tokens=3, pad_token_id=0))


# --- constraint bookkeeping (transformers' classes, same answers) --------------------------------------------


def test_constraint_states_match_transformers():
    from transformers.generation import beam_constraints as hf

    specs = [
        [("phrasal", [1, 2, 3])],
        [("disjunctive", [[1, 2], [1, 3, 4], [5]])],
        [("phrasal", [7, 8]), ("disjunctive", [[1, 2], [1, 3]]), ("phrasal", [9])],
    ]
    g = torch.Generator().manual_seed(0)
    for spec in specs:
        ours = ConstraintListState(_constraints(spec))
        theirs = hf.ConstraintListState(
            [(hf.PhrasalConstraint if k == "phrasal" else hf.DisjunctiveConstraint)(ids) for k, ids in spec]
        )
        for _ in range(30):
            seq = torch.randint(1, 10, (12,), generator=g).tolist()
            ours.reset(seq)
            theirs.reset(seq)
            assert (ours.completed, ours.get_bank(), ours.advance()) == (
                theirs.completed,
                theirs.get_bank(),
                theirs.advance(),
            )


def test_disjunctive_rejects_prefixes():
    with pytest.raises(ValueError, match="prefix"):
        DisjunctiveConstraint([[1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="non-empty"):
        PhrasalConstraint([])


# --- the CLI ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, kw",
    [
        (["--penalty-alpha", "0.6", "--top-k", "4"], dict(penalty_alpha=0.6, top_k=4)),
        (
            ["--num-beams", "4", "--num-beam-groups", "2", "--diversity-penalty", "1.0"],
            dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0),
        ),
        (["--num-beams", "3", "--force-words", "rain"], dict(num_beams=3, force_words=["rain"])),
        (["--prompt-lookup", "3"], dict(prompt_lookup_num_tokens=3)),
    ],
)
def test_cli_flags_run_the_strategy(capsys, flags, kw):
    from gpt2kit.cli import main

    tok = gpt2kit.AutoTokenizer.from_pretrained("gpt2kit-demo")
    model = gpt2kit.GPT2LMHeadModel.from_pretrained("gpt2kit-demo").eval()
    prompt = "The weather today is"
    if "force_words" in kw:
        kw["force_words_ids"] = [tok.encode(" " + w) for w in kw.pop("force_words")]
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=6, pad_token_id=tok.eos_token_id, **kw)
    expected = prompt + tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    base = [
        "generate",
        "--model",
        "gpt2kit-demo",
        prompt,
        "--max-new-tokens",
        "6",
        "--no-stream",
        "--weights",
        "float",
    ]
    assert main([*base, *flags]) == 0
    assert capsys.readouterr().out.rstrip("\n") == expected


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--penalty-alpha", "0.6", "--do-sample"], "drop --do-sample"),
        (["--penalty-alpha", "0.6", "--top-k", "1"], "--top-k 4"),
        (["--num-beam-groups", "2", "--diversity-penalty", "1"], "pass --num-beams"),
        (["--num-beams", "4", "--num-beam-groups", "2"], "needs --diversity-penalty"),
        (["--force-words", "rain"], "--num-beams 4"),
        (["--num-beams", "4", "--num-beam-groups", "3", "--diversity-penalty", "1"], "divisible"),
        (["--prompt-lookup", "3", "--do-sample"], "greedy search only"),
    ],
)
def test_cli_refuses_invalid_combinations(capsys, flags, message):
    from gpt2kit.cli import main

    assert (
        main(["generate", "--model", "gpt2kit-demo", "hi", "--max-new-tokens", "2", "--no-stream", *flags])
        == 2
    )
    assert message in capsys.readouterr().err
