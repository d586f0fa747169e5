"""`gpt2kit serve` with vLLM 0.6.2's search fields: beam search (`use_beam_search`, `best_of` as the width,
`n`, `length_penalty`, `early_stopping`) token for token against transformers 4.57's generate(num_beams=...,
num_return_sequences=...), and `best_of` > n sampling (the n most likely of best_of samples).

The checkpoint is a tiny random GPT-2 written by transformers here, with GPT-2's vocabulary; its end-of-text
row copies a frequent token's (scaled), so beams end at different lengths and length_penalty matters.
Servers come from test_serve's `Running`.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from gpt2kit import GPT2TokenizerFast  # noqa: E402
from gpt2kit.serve import engine as engine_mod  # noqa: E402
from hf_oracle import hf_model, load_hf  # noqa: E402
from test_serve import CHAT, CHATML, NAME, Running  # noqa: E402

EOS = 50256
TEXTURE = 44409  # " Texture": this random model's favourite token, a stop token id below
PROMPTS = ["The quick brown fox", "Once upon a time", "Hello", "import numpy as np\n"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("beam-model")
    model = hf_model(
        "GPT2LMHeadModel", seed=3, vocab_size=50257, n_positions=128, n_embd=64, n_layer=2, n_head=4
    )
    with torch.no_grad():  # eos about as likely as " Texture": beams end at many lengths
        model.transformer.wte.weight[EOS] = model.transformer.wte.weight[TEXTURE] * 0.98
    model.save_pretrained(path)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf(hf_folder):
    """transformers 4.57 on the same checkpoint (its own tokenizer class too, for stop_strings)."""
    import transformers

    return load_hf("GPT2LMHeadModel", hf_folder), transformers.GPT2TokenizerFast.from_pretrained(hf_folder)


@pytest.fixture(scope="module")
def beam_server(hf_folder):
    s = Running(hf_folder, max_batch=8, chat_template=CHATML)
    yield s
    s.stop()


def hf_beams(hf, ids, width, n, max_new, eos=(EOS,), **kw):
    """transformers' beams: token lists, each cut after the token that ended it."""
    model, tok = hf
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), num_beams=width, num_return_sequences=n, max_new_tokens=max_new,
            do_sample=False, eos_token_id=list(eos), pad_token_id=eos[0],
            **({"tokenizer": tok} if "stop_strings" in kw else {}), **kw,
        )  # fmt: skip
    beams = []
    for row in out[:, len(ids) :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        beams.append(row[:cut])
    return beams


def expected(hf, beams, max_new, eos=(EOS,), stop=()):
    """(text, finish_reason) per beam, as the server reports them."""
    tok = hf[1]
    out = []
    for tokens in beams:
        text = tok.decode(tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        done = (tokens and tokens[-1] in eos) or cut >= 0 or len(tokens) < max_new
        out.append((text, "stop" if done else "length"))
    return out


SEARCHES = [  # (best_of, n, length_penalty, early_stopping)
    (None, 3, 1.0, False),  # the width is n
    (4, 2, -1.0, True),  # short beams win
    (4, 3, 2.0, "never"),  # long beams win
]


@pytest.mark.parametrize("best_of, n, length_penalty, early_stopping", SEARCHES)
def test_beam_search_equals_transformers(beam_server, hf, best_of, n, length_penalty, early_stopping):
    """The openai client's extra_body, as a vLLM user sends it: every beam's text, finish_reason and the
    usage equal transformers' generate(num_beams=best_of or n, num_return_sequences=n, ...)."""
    client = beam_server.client()
    tok = hf[1]
    extra = dict(use_beam_search=True, length_penalty=length_penalty, early_stopping=early_stopping)
    if best_of is not None:
        extra["best_of"] = best_of
    width = best_of or n
    reasons = set()
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        resp = client.completions.create(model=NAME, prompt=prompt, max_tokens=20, n=n, extra_body=extra)
        beams = hf_beams(hf, ids, width, n, 20, length_penalty=length_penalty, early_stopping=early_stopping)
        want = expected(hf, beams, 20)
        assert [(c.text, c.finish_reason) for c in resp.choices] == want, prompt
        assert [c.index for c in resp.choices] == list(range(n))
        assert resp.usage.prompt_tokens == len(ids)
        assert resp.usage.completion_tokens == sum(len(b) for b in beams)
        reasons |= {r for _, r in want}
    if length_penalty == 1.0:  # (-1 favours short beams, which all end with eos; 2 long ones)
        assert reasons == {"stop", "length"}  # both kinds of ending were compared


def test_beam_search_tokens_and_logprobs_over_raw_http(beam_server, hf):
    """Raw JSON, token ids in: each beam's tokens (through logprobs) are transformers' tokens, with the
    model's own log-probabilities; several prompts in one request keep their choices in order."""
    model, tok = hf
    prompts = [tok.encode(p) for p in PROMPTS[:2]]
    body = dict(model=NAME, prompt=prompts, max_tokens=12, n=2, best_of=3, use_beam_search=True, logprobs=2,
                temperature=0, length_penalty=0.5)  # fmt: skip
    r = httpx.post(beam_server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for p, ids in enumerate(prompts):
        beams = hf_beams(hf, ids, 3, 2, 12, length_penalty=0.5)
        for c, tokens in zip(choices[2 * p : 2 * p + 2], beams):
            lp = c["logprobs"]
            assert lp["tokens"] == [tok.decode([t]) for t in tokens]
            with torch.no_grad():
                full = model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1].log_softmax(-1)
            want = [float(full[i, t]) for i, t in enumerate(tokens)]
            assert lp["token_logprobs"] == pytest.approx(want, abs=1e-4)
            assert all(len(top) >= 2 for top in lp["top_logprobs"])
            assert lp["text_offset"][0] == len(tok.decode(ids))


def test_beam_search_stop_token_ids_stop_strings_and_ignore_eos(beam_server, hf):
    tok = hf[1]
    client = beam_server.client()
    ids = tok.encode(PROMPTS[0])
    # stop_token_ids end beams as eos does
    extra = dict(use_beam_search=True, stop_token_ids=[TEXTURE])
    resp = client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=16, n=3, extra_body=extra)
    beams = hf_beams(hf, ids, 3, 3, 16, eos=(EOS, TEXTURE))
    assert [(c.text, c.finish_reason) for c in resp.choices] == expected(hf, beams, 16, eos=(EOS, TEXTURE))
    assert resp.usage.completion_tokens == sum(len(b) for b in beams)
    # ignore_eos: only the stop token ids end a beam (here none: every beam runs to max_tokens)
    extra = dict(use_beam_search=True, ignore_eos=True)
    resp = client.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=10, n=2, extra_body=extra)
    with torch.no_grad():
        out = hf[0].generate(
            torch.tensor([tok.encode(PROMPTS[1])]), num_beams=2, num_return_sequences=2, max_new_tokens=10,
            do_sample=False, eos_token_id=None, pad_token_id=EOS,
        )  # fmt: skip
    want = [tok.decode(row[len(tok.encode(PROMPTS[1])) :], skip_special_tokens=True) for row in out.tolist()]
    assert [c.text for c in resp.choices] == want
    assert {c.finish_reason for c in resp.choices} == {"length"} and resp.usage.completion_tokens == 20
    # a stop string ends a beam where transformers' StopStringCriteria ends it; the text stops before it
    full = expected(hf, hf_beams(hf, ids, 3, 1, 16), 16)[0][0]
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    assert stop.strip(), full
    extra = dict(use_beam_search=True, best_of=3)
    resp = client.completions.create(
        model=NAME, prompt=PROMPTS[0], max_tokens=16, n=2, stop=[stop], extra_body=extra
    )
    beams = hf_beams(hf, ids, 3, 2, 16, stop_strings=[stop])
    want = expected(hf, beams, 16, stop=[stop])
    assert [(c.text, c.finish_reason) for c in resp.choices] == want
    assert want[0] == (full[: full.index(stop)], "stop")


def test_beam_search_penalties_min_tokens_and_logit_bias(beam_server, hf):
    """The batch's processing fields act in a beam search as transformers' processors do: repetition_penalty,
    min_tokens (min_new_tokens) and logit_bias (sequence_bias of single tokens)."""
    tok = hf[1]
    client = beam_server.client()
    ids = tok.encode(PROMPTS[1])
    for extra, kw in [
        (dict(repetition_penalty=10.0), dict(repetition_penalty=10.0)),
        (
            dict(min_tokens=8, logit_bias={str(TEXTURE): -3}),
            dict(min_new_tokens=8, sequence_bias={(TEXTURE,): -3.0}),
        ),
    ]:
        resp = client.completions.create(
            model=NAME,
            prompt=PROMPTS[1],
            max_tokens=14,
            n=2,
            extra_body=dict(use_beam_search=True, best_of=3, **extra),
        )
        beams = hf_beams(hf, ids, 3, 2, 14, **kw)
        assert [(c.text, c.finish_reason) for c in resp.choices] == expected(hf, beams, 14), extra
        assert beams != hf_beams(hf, ids, 3, 2, 14), extra  # the setting changed the beams


def test_beam_search_echo_and_stream(beam_server, hf):
    """echo returns the prompt before each beam; streamed, each beam comes whole in one chunk when the search
    ends (after its echoed prompt), then usage and [DONE]."""
    tok = hf[1]
    client = beam_server.client()
    prompt = PROMPTS[2]
    kw = dict(model=NAME, prompt=prompt, max_tokens=14, n=3, echo=True, logprobs=1,
              extra_body=dict(use_beam_search=True, length_penalty=1.5))  # fmt: skip
    whole = client.completions.create(**kw)
    beams = hf_beams(hf, tok.encode(prompt), 3, 3, 14, length_penalty=1.5)
    want = expected(hf, beams, 14)
    assert [(c.text, c.finish_reason) for c in whole.choices] == [(prompt + t, r) for t, r in want]
    lp = whole.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.tokens) == len(tok.encode(prompt)) + len(beams[0])
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    texts, finals = ["", "", ""], {}
    for ch in chunks[:-1]:
        (c,) = ch.choices
        texts[c.index] += c.text
        if c.finish_reason:
            finals[c.index] = c.finish_reason
    assert texts == [c.text for c in whole.choices]
    assert finals == {c.index: c.finish_reason for c in whole.choices}
    assert len(chunks) == 3 * 2 + 1  # per beam: the prompt, then the beam; then usage
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    body = dict(model=NAME, prompt=prompt, max_tokens=14, n=2, use_beam_search=True, stream=True)
    with httpx.stream("POST", beam_server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert [e["choices"][0]["index"] for e in events] == [0, 1]
    want = expected(hf, hf_beams(hf, tok.encode(prompt), 2, 2, 14), 14)
    assert [(e["choices"][0]["text"], e["choices"][0]["finish_reason"]) for e in events] == want


def test_beam_search_in_chat(beam_server, hf):
    model, tok = hf
    text = tok.apply_chat_template(CHAT, chat_template=CHATML, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    resp = beam_server.client().chat.completions.create(
        model=NAME, messages=CHAT, max_tokens=12, n=2, extra_body=dict(use_beam_search=True, best_of=4)
    )
    beams = hf_beams(hf, ids, 4, 2, 12)
    assert [(c.message.content, c.finish_reason) for c in resp.choices] == expected(hf, beams, 12)
    assert resp.usage.prompt_tokens == len(ids)
    with pytest.raises(openai.BadRequestError, match="beam width of at least 2") as e:
        beam_server.client().chat.completions.create(
            model=NAME, messages=CHAT, max_tokens=4, extra_body=dict(use_beam_search=True)
        )
    assert e.value.body["param"] == "best_of"


def test_beam_search_runs_between_batched_requests(beam_server, hf):
    """Beam searches run on the engine thread between decode steps: greedy requests decoded in the batch at
    the same time still get generate()'s tokens, and the beams transformers'."""
    from concurrent.futures import ThreadPoolExecutor

    model, tok = hf
    client = beam_server.client()

    def greedy(prompt):
        return (
            client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0).choices[0].text
        )

    def beam(prompt):
        extra = dict(use_beam_search=True)
        return [c.text for c in client.completions.create(model=NAME, prompt=prompt, max_tokens=16, n=2,
                                                          extra_body=extra).choices]  # fmt: skip

    with ThreadPoolExecutor(6) as pool:
        greedy_f = [pool.submit(greedy, p) for p in PROMPTS]
        beam_f = [pool.submit(beam, p) for p in PROMPTS[:2]]
    for p, f in zip(PROMPTS, greedy_f):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([tok.encode(p)]), max_new_tokens=24, do_sample=False, pad_token_id=EOS
            )
        assert f.result() == tok.decode(out[0, len(tok.encode(p)) :], skip_special_tokens=True), p
    for p, f in zip(PROMPTS, beam_f):
        assert f.result() == [t for t, _ in expected(hf, hf_beams(hf, tok.encode(p), 2, 2, 16), 16)], p


def test_a_departed_clients_beam_search_stops(beam_server, monkeypatch):
    """A client that leaves mid-search: the search stops at its next step (counted as cancelled) and the
    engine serves the next request."""
    call = engine_mod._Interrupt.__call__

    def slow(self, input_ids, scores):
        time.sleep(0.02)
        return call(self, input_ids, scores)

    monkeypatch.setattr(engine_mod._Interrupt, "__call__", slow)
    engine = beam_server.engine
    before = engine.stats.cancelled
    body = dict(model=NAME, prompt="Hi", max_tokens=100, n=2, use_beam_search=True, ignore_eos=True)
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(beam_server.url + "/v1/completions", json=body, timeout=0.3)
    deadline = time.time() + 5
    while engine.stats.cancelled == before and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats.cancelled == before + 2  # its two beams
    assert time.monotonic() - start < 1.9  # 100 steps of 20 ms would take 2 s
    monkeypatch.setattr(engine_mod._Interrupt, "__call__", call)
    ok = beam_server.client().completions.create(model=NAME, prompt="Hi", max_tokens=3, temperature=0)
    assert ok.usage.completion_tokens >= 1


def test_best_of_keeps_the_n_most_likely_samples(beam_server):
    """best_of=4, n=2 draws the same four samples as n=4 with the same seed (one generator per request), and
    returns the two with the highest cumulative logprob, best first; usage counts the returned ones."""
    client = beam_server.client()
    kw = dict(model=NAME, prompt="Once upon a time", max_tokens=10, temperature=1.0, seed=1234)
    four = client.completions.create(**kw, n=4, logprobs=0)
    # at temperature 1 with nothing else set, samples are drawn from the model's own distribution
    ranked = sorted(four.choices, key=lambda c: -sum(c.logprobs.token_logprobs))
    best = client.completions.create(**kw, n=2, best_of=4)
    assert [c.text for c in best.choices] == [c.text for c in ranked[:2]]
    assert [c.index for c in best.choices] == [0, 1]
    assert [c.finish_reason for c in best.choices] == [c.finish_reason for c in ranked[:2]]
    assert best.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in ranked[:2])
    # streamed: each chosen sample in one chunk once all four are done
    chunks = list(client.completions.create(**kw, n=2, best_of=4, stream=True))
    assert [(ch.choices[0].index, ch.choices[0].text) for ch in chunks] == [
        (0, ranked[0].text),
        (1, ranked[1].text),
    ]
    assert len({c.text for c in four.choices}) > 2  # the samples differ, so the ranking was tested


@pytest.mark.parametrize(
    "extra, param",
    [
        (dict(use_beam_search=True), "best_of"),  # width 1 (n): vLLM 0.6.2 asks for best_of > 1
        (dict(use_beam_search=True, n=2, best_of=1), "best_of"),  # best_of < n
        (dict(use_beam_search=True, n=2, temperature=0.7), "temperature"),
        (dict(use_beam_search=True, n=2, top_p=0.9), "top_p"),
        (dict(use_beam_search=True, n=2, top_k=5), "top_k"),
        (dict(use_beam_search=True, n=2, min_p=0.1), "min_p"),
        (dict(use_beam_search=True, n=2, early_stopping="sometimes"), "early_stopping"),
        (dict(use_beam_search=True, n=2, length_penalty="long"), "length_penalty"),
        (dict(use_beam_search="yes", n=2), "use_beam_search"),
        (dict(use_beam_search=True, best_of=9), "best_of"),  # over --max-batch 8
        (dict(best_of=3, temperature=0), "best_of"),  # greedy samples are all the same
        (dict(n=3, best_of=2), "best_of"),
        (dict(length_penalty=2.0), "length_penalty"),  # beam search only
        (dict(early_stopping=True), "early_stopping"),
        (dict(use_beam_search=True, n=2, include_stop_str_in_output=True), "include_stop_str_in_output"),
    ],
)
def test_bad_search_fields_are_400s_naming_them(beam_server, extra, param):
    r = httpx.post(
        beam_server.url + "/v1/completions",
        json=dict(model=NAME, prompt="hi", max_tokens=4, **extra),
        timeout=30,
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and f"'{param}'" in err["message"]
    with pytest.raises(openai.BadRequestError):
        beam_server.client().completions.create(model=NAME, prompt="hi", max_tokens=4, extra_body=extra)


def test_serving_md_python_runs_against_the_server_it_documents(capsys):
    """docs/serving.md's Python blocks, pasted in order, against the server that doc starts: every `model=`
    is the documented `--model path/to/gpt2`, and with `--model gpt2kit-demo` (the doc's offline choice, then
    `model="gpt2kit-demo"`) every call, the beam search included, runs (a model id the server does not serve
    is a 404)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    served = re.search(r"^gpt2kit serve --model (\S+)", doc, re.M).group(1)
    assert served == "path/to/gpt2"
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    code = "\n".join(blocks)
    assert "client.completions.create" in code and "use_beam_search" in code
    ids = re.findall(r"\bmodel=(['\"])(.*?)\1", code)
    assert ids and {m for _, m in ids} == {served}, f"docs/serving.md sends {ids}, its server serves {served}"
    template = re.search(r"```jinja\n(.*?)```", doc, re.S).group(1)  # the doc's chatml.jinja
    s = Running("gpt2kit-demo", name="gpt2kit-demo", chat_template=template)
    try:
        code = code.replace(f'"{served}"', '"gpt2kit-demo"').replace("http://127.0.0.1:8000", s.url)
        scope: dict = {}
        exec(compile(code, "docs/serving.md", "exec"), scope)  # 404 / 400 raise here
        assert scope["client"].models.list().data[0].id == "gpt2kit-demo"
    finally:
        s.stop()
