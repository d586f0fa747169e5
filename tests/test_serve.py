"""`gpt2kit serve`: a real uvicorn server on 127.0.0.1, driven by the official `openai` client and httpx.

The model is a tiny random GPT-2 (2 layers x 64 wide, GPT-2's vocabulary) with large weights, so that its
next-token distributions are peaked and greedy decoding is not decided by rounding.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import uvicorn  # noqa: E402

from gpt2kit import Embedder, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast  # noqa: E402
from gpt2kit.serve.app import build_app, load_engine, uvicorn_config  # noqa: E402
from gpt2kit.serve.engine import apply_penalties, draw, sampling_probs  # noqa: E402

NAME = "tiny-gpt2"
N_POSITIONS = 128


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-model")
    torch.manual_seed(7)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=50257, n_positions=N_POSITIONS, n_embd=64, n_layer=2, n_head=4)
    )
    with torch.no_grad():  # large weights: peaked distributions (see the module docstring)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif ".ln_" in name or "ln_f" in name:
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.3)
    model.save_pretrained(path)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(path)
    return path


class Running:
    """A uvicorn server in a thread, on a free loopback port."""

    def __init__(
        self,
        folder,
        api_key=None,
        max_body=1 << 20,
        max_stop=64,
        head_timeout=10.0,
        chat_template=None,
        name=NAME,
        **engine_options,
    ):
        self.engine = load_engine(folder, **engine_options)
        app = build_app(
            self.engine,
            name,
            api_key=api_key,
            max_body=max_body,
            max_stop=max_stop,
            chat_template=chat_template,
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # the settings `gpt2kit serve` runs with: connection limits and the slow-client guards
        config = uvicorn_config(app, self.engine, head_timeout=head_timeout, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs=dict(sockets=[sock]), daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(folder):
    s = Running(folder, max_batch=8)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def lm(folder):
    return GPT2LMHeadModel.from_pretrained(folder).eval(), GPT2TokenizerFast.from_pretrained(folder)


def greedy_reference(lm, prompt_ids, max_new):
    model, tok = lm
    out = model.generate(
        torch.tensor([prompt_ids]), max_new_tokens=max_new, do_sample=False, pad_token_id=50256
    )
    new = out[0, len(prompt_ids) :].tolist()
    return new, tok.decode(new, skip_special_tokens=True)


# --- completions ----------------------------------------------------------------------------------------


PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived",
    "Hello",
    "import numpy as np\nimport torch\n\ndef main():",
    "A much longer prompt that keeps going and going, so that the rows of the batch have very different "
    "lengths when they are decoded together in one step",
]


def test_concurrent_greedy_equals_generate(server, lm):
    """Prompts of different lengths arrive at different moments and are decoded in one batch; each greedy
    continuation must still be exactly what model.generate() gives for that prompt alone."""
    _, tok = lm
    client = server.client()
    steps_before = server.engine.stats.steps

    def one(k):
        time.sleep(0.02 * k)  # staggered: newcomers join a batch that is already decoding
        prompt = PROMPTS[k % len(PROMPTS)]
        return prompt, client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0)

    with ThreadPoolExecutor(8) as pool:
        # sampled requests run in the same batches, with their own settings
        noise = [
            pool.submit(
                client.completions.create,
                model=NAME,
                prompt="Noise",
                max_tokens=30,
                temperature=1.0,
                top_p=0.9,
            )
            for _ in range(2)
        ]
        results = list(pool.map(one, range(8)))
        for f in noise:
            assert f.result().choices[0].finish_reason in ("stop", "length")
    for prompt, resp in results:
        ids = tok.encode(prompt)
        want_ids, want_text = greedy_reference(lm, ids, 24)
        assert resp.choices[0].text == want_text, prompt
        assert resp.usage.prompt_tokens == len(ids)
        assert resp.usage.completion_tokens == len(want_ids)
        assert resp.choices[0].finish_reason == ("stop" if 50256 in want_ids else "length")
    assert server.engine.stats.max_rows >= 3, "requests were not decoded together"
    assert server.engine.stats.steps > steps_before


def test_packed_and_int8_weights_serve(folder, lm):
    """--weights packed decodes the same greedy tokens as generate() (only the summation order changes);
    int8 serves completions and embeddings too. auto picks packed on CPU."""
    from gpt2kit.model.packed import PackedLinear, packing_available

    if not packing_available():
        pytest.skip("this torch build has no oneDNN linear ops")
    s = Running(folder, max_batch=4, weights="auto")
    try:
        assert isinstance(s.engine.model.lm_head, PackedLinear)
        client = s.client()
        for prompt in PROMPTS[:3]:
            resp = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
            assert resp.choices[0].text == greedy_reference(lm, lm[1].encode(prompt), 12)[1], prompt
    finally:
        s.stop()
    s = Running(folder, max_batch=4, weights="int8")
    try:
        from gpt2kit.model.quant import DynamicInt8Linear

        int8 = [m for m in s.engine.model.modules() if isinstance(m, DynamicInt8Linear)]
        assert all(m.few_rows_engine for m in int8)  # a server runs long: batched steps on their own engine
        client = s.client()
        resp = client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=6, temperature=0)
        assert resp.usage.completion_tokens >= 1 and resp.choices[0].finish_reason in ("stop", "length")
        vec = client.embeddings.create(model=NAME, input="int8 vectors").data[0].embedding
        assert len(vec) == 64 and all(v == v for v in vec)  # no NaN
    finally:
        s.stop()
    with pytest.raises(ValueError, match="weights='fp8' is not one of"):
        load_engine(folder, weights="fp8")
    with pytest.raises(ValueError, match="max_batch"):  # the engine's own message, before any packing
        load_engine(folder, weights="auto", max_batch=0)


def test_token_id_prompts_and_several_prompts(server, lm):
    _, tok = lm
    a, b = tok.encode("The quick brown fox"), tok.encode("Hello")
    resp = server.client().completions.create(model=NAME, prompt=[a, b], max_tokens=8, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.choices[0].text == greedy_reference(lm, a, 8)[1]
    assert resp.choices[1].text == greedy_reference(lm, b, 8)[1]
    assert resp.usage.prompt_tokens == len(a) + len(b)


def test_stream_matches_non_stream_and_ends_with_done(server):
    client = server.client()
    kw = dict(model=NAME, prompt="Once upon a time", max_tokens=20, temperature=0)
    whole = client.completions.create(**kw).choices[0]
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.text and len(chunks) > 3
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    with httpx.stream("POST", server.url + "/v1/completions", json=dict(kw, stream=True)) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_seed_reproduces_sampling_and_n_gives_n_choices(server):
    client = server.client()
    kw = dict(model=NAME, prompt="Once upon a time", max_tokens=16, temperature=1.0, n=3, seed=1234)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({c.text for c in a.choices}) > 1, "n samples should differ"
    other = client.completions.create(**dict(kw, seed=99))
    assert [c.text for c in other.choices] != [c.text for c in a.choices]


def test_stop_string_cuts_the_text(server, lm):
    _, tok = lm
    prompt = "Once upon a time, in a land far away, there lived"
    _, full = greedy_reference(lm, tok.encode(prompt), 30)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    resp = server.client().completions.create(
        model=NAME, prompt=prompt, max_tokens=30, temperature=0, stop=[stop]
    )
    assert resp.choices[0].text == full[: full.index(stop)]
    assert resp.choices[0].finish_reason == "stop"


def test_logprobs_and_echo(server, lm):
    model, tok = lm
    prompt = "The quick brown fox"
    ids = tok.encode(prompt)
    resp = server.client().completions.create(
        model=NAME, prompt=prompt, max_tokens=5, temperature=0, logprobs=3, echo=True
    )
    c = resp.choices[0]
    assert c.text.startswith(prompt)
    lp = c.logprobs
    n = len(ids) + resp.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.text_offset[0] == 0
    with torch.no_grad():
        full = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    # prompt token t is scored by position t - 1
    for t in range(1, len(ids)):
        assert lp.token_logprobs[t] == pytest.approx(float(full[t - 1, ids[t]]), abs=1e-4)
    for t in range(len(ids), n):  # greedy: the chosen token is the most likely one
        top = lp.top_logprobs[t]
        assert len(top) == 3 and lp.token_logprobs[t] == pytest.approx(max(top.values()), abs=1e-5)
    assert lp.text_offset == sorted(lp.text_offset)


def test_penalties_and_sampling_math():
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    out = apply_penalties(
        logits, counts, presence=[0.5, 0.0], frequency=[1.0, 0.25], logit_bias=[{}, {1: 5.0}]
    )
    want = torch.tensor([[1.0, 2.0 - 1.0 - 0.5, 3.0 - 3.0 - 0.5], [1.0 - 0.5, 7.0, 3.0]])
    torch.testing.assert_close(out, want)
    assert apply_penalties(logits, counts, [0.0, 0.0], [0.0, 0.0]) is logits  # greedy stays bit-exact
    same = apply_penalties(logits, counts, [0.0] * 2, [0.0] * 2, repetition=[1.0, 1.0], seen=counts > 0)
    assert same is logits
    # top_p=0.7 keeps the two most likely tokens (0.5 + 0.3 >= 0.7); multinomial needs no renormalising
    probs = sampling_probs(torch.log(torch.tensor([[0.5, 0.3, 0.2]] * 2)), [1.0, 1.0], [0.7, 1.0])
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.3, 0.0], [0.5, 0.3, 0.2]]))
    # inverse-CDF draws follow the (unnormalised) distribution and never pick a zero-probability token
    p = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0]]).expand(100_000, -1).contiguous()
    freq = torch.bincount(draw(p * 2.0, torch.Generator().manual_seed(0)), minlength=6) / 100_000
    torch.testing.assert_close(freq, p[0], atol=0.01, rtol=0)
    assert freq[[0, 2, 5]].sum() == 0


def test_repetition_top_k_min_p_match_the_generation_processors():
    """The server's batched math equals gpt2kit's logits processors (themselves tested against
    transformers'), row by row, each row with its own settings."""
    from gpt2kit.generation.processors import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    ids = torch.randint(0, 50, (3, 12))  # prompt + generated tokens of each row
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    pens, temps, ks, mps = [1.5, 1.0, 0.7], [0.7, 1.0, 1.3], [5, 0, 50], [0.0, 0.2, 0.05]
    scores = apply_penalties(logits, torch.zeros(3, 50), [0.0] * 3, [0.0] * 3, repetition=pens, seen=seen)
    probs = sampling_probs(scores, temps, [1.0] * 3, top_k=ks, min_p=mps)
    for i in range(3):
        row = logits[i : i + 1]
        if pens[i] != 1.0:
            row = RepetitionPenaltyLogitsProcessor(pens[i])(ids[i : i + 1], row)
        torch.testing.assert_close(scores[i : i + 1], row)
        row = TemperatureLogitsWarper(temps[i])(ids[i : i + 1], row)
        if ks[i]:
            row = TopKLogitsWarper(ks[i])(ids[i : i + 1], row)
        if mps[i]:
            row = MinPLogitsWarper(mps[i])(ids[i : i + 1], row)
        torch.testing.assert_close(probs[i : i + 1] / probs[i].sum(), row.softmax(-1))
    assert int((probs[0] > 0).sum()) == 5


def test_frequency_penalty_changes_greedy_output(server):
    client = server.client()
    kw = dict(model=NAME, prompt="Hello", max_tokens=40, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    penalised = client.completions.create(**kw, frequency_penalty=2.0, presence_penalty=2.0).choices[0].text
    assert plain != penalised


def test_top_k_and_min_p_are_honoured(server, lm):
    """top_k=1 (and min_p=1) leave only the most likely token: every seed gives the greedy text."""
    _, tok = lm
    prompt = "Once upon a time"
    _, greedy = greedy_reference(lm, tok.encode(prompt), 16)
    client = server.client()
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        texts = [
            client.completions.create(
                model=NAME, prompt=prompt, max_tokens=16, temperature=1.0, seed=seed, extra_body=extra
            )
            .choices[0]
            .text
            for seed in (1, 2, 3)
        ]
        assert texts == [greedy] * 3, extra
    # top_k=-1 and 0 mean "every token" (vLLM's spelling): the same samples as without top_k
    kw = dict(model=NAME, prompt=prompt, max_tokens=16, temperature=1.0, seed=5)
    plain = client.completions.create(**kw).choices[0].text
    for off in (-1, 0):
        assert client.completions.create(**kw, extra_body={"top_k": off}).choices[0].text == plain


def test_repetition_penalty_equals_generate(server, lm):
    model, tok = lm
    prompt = "Hello Hello Hello"
    ids = tok.encode(prompt)
    client = server.client()
    kw = dict(model=NAME, prompt=prompt, max_tokens=30, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    got = client.completions.create(**kw, extra_body={"repetition_penalty": 1.8}).choices[0].text
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=30, do_sample=False, repetition_penalty=1.8, pad_token_id=50256
    )
    want = tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
    assert got == want and got != plain


def test_min_tokens_ignore_eos_stop_token_ids_skip_special_tokens(server, lm):
    _, tok = lm
    client = server.client()
    eos_first = dict(model=NAME, prompt="Hi", max_tokens=12, temperature=0, logit_bias={"50256": 100})
    r = client.completions.create(**eos_first)
    assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (1, "stop")
    r = client.completions.create(**eos_first, extra_body={"min_tokens": 5})
    assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (6, "stop")
    r = client.completions.create(**eos_first, extra_body={"ignore_eos": True})
    assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (12, "length")
    assert r.choices[0].text == ""  # the end-of-text tokens are special: skipped in the text
    r = client.completions.create(**eos_first, extra_body={"ignore_eos": True, "skip_special_tokens": False})
    assert r.choices[0].text == "<|endoftext|>" * 12
    # stop_token_ids end a sequence at that token (kept in the text, as vLLM, since it is not special)
    prompt = "Once upon a time, in a land far away, there lived"
    want_ids, _ = greedy_reference(lm, tok.encode(prompt), 20)
    stop_id = want_ids[5]
    at = want_ids.index(stop_id)
    r = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=20, temperature=0, extra_body={"stop_token_ids": [stop_id]}
    )
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == at + 1
    assert r.choices[0].text == tok.decode(want_ids[: at + 1])


def test_a_request_larger_than_the_queue_is_a_400_naming_max_queue(folder):
    s = Running(folder, max_batch=1, max_queue=2)
    try:
        r = httpx.post(
            s.url + "/v1/completions", json=dict(model=NAME, prompt=["a", "b", "c"], max_tokens=1), timeout=30
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "prompt" and "--max-queue 2" in err["message"]
        ok = httpx.post(
            s.url + "/v1/completions", json=dict(model=NAME, prompt=["a", "b"], max_tokens=1), timeout=30
        )
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 2
    finally:
        s.stop()


def test_vllm_fields_at_their_off_values_are_accepted(server):
    body = dict(model=NAME, prompt="Hi", max_tokens=3, temperature=0, use_beam_search=False,
                length_penalty=1.0, include_stop_str_in_output=False, top_k=-1, min_p=0.0,
                repetition_penalty=1.0, min_tokens=0, ignore_eos=False, skip_special_tokens=True,
                stop_token_ids=[], seed=2**64 - 1, user="someone",
                spaces_between_special_tokens=False)  # fmt: skip
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text


# --- embeddings and small endpoints ---------------------------------------------------------------------


def test_embeddings_equal_the_embedder(server, folder):
    texts = ["a first text", "and a second, somewhat longer one", "x"]
    want = Embedder.from_pretrained(folder).embed(texts)
    client = server.client()
    got = client.embeddings.create(model=NAME, input=texts)  # the client asks for base64 by default
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, atol=1e-5)
    floats = client.embeddings.create(model=NAME, input=texts[1], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, want[1], atol=1e-5)
    ids = GPT2TokenizerFast.from_pretrained("gpt2").encode(texts[0])
    by_ids = client.embeddings.create(model=NAME, input=ids, encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, want[0], atol=1e-5)
    assert got.usage.prompt_tokens == sum(
        len(GPT2TokenizerFast.from_pretrained("gpt2").encode(t)) for t in texts
    )
    raw = httpx.post(
        server.url + "/v1/embeddings", json=dict(model=NAME, input="x", encoding_format="base64")
    ).json()
    np.testing.assert_allclose(
        np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), "<f4"), want[2], atol=1e-5
    )


def test_concurrent_embeddings_are_merged(server, folder):
    texts = [f"text number {i} " * (1 + i % 7) for i in range(24)]
    want = Embedder.from_pretrained(folder).embed(texts)
    client = server.client()
    before = server.engine.stats.embed_batches
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: client.embeddings.create(model=NAME, input=t).data[0].embedding, texts))
    np.testing.assert_allclose(np.array(got), want, atol=1e-5)
    assert server.engine.stats.embed_batches - before < len(texts), "no two requests were merged"


def test_models_health_tokenize(server, lm):
    _, tok = lm
    models = server.client().models.list()
    assert [m.id for m in models.data] == [NAME]
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert card["max_model_len"] == N_POSITIONS and card["embedding"] == {
        "dimensions": 64,
        "pooling": "mean",
        "layer": 2,
    }
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = httpx.post(server.url + "/tokenize", json={"prompt": "Hello world"}).json()
    assert r["tokens"] == tok.encode("Hello world") and r["count"] == 2
    assert httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}).json() == {
        "prompt": "Hello world"
    }


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (dict(model=NAME, prompt="hi", temperature="hot"), 400, "temperature"),
        (dict(model=NAME, prompt="hi", temperature=3), 400, "temperature"),
        (dict(model=NAME, prompt="hi", max_tokens=10_000), 400, "max_tokens"),
        (dict(model=NAME, prompt="hi", max_tokens=-1), 400, "max_tokens"),
        (dict(model=NAME, prompt="hi", max_tokens=1.5), 400, "max_tokens"),
        (dict(model=NAME, prompt=""), 400, "prompt"),
        (dict(model=NAME, prompt=[]), 400, "prompt"),
        (dict(model=NAME, prompt=[[1, 2], []]), 400, "prompt"),
        (dict(model=NAME, prompt=[1, 99999]), 400, "prompt"),
        (dict(model=NAME, prompt={"a": 1}), 400, "prompt"),
        (dict(model=NAME), 400, "prompt"),
        (dict(model=NAME, prompt="hi", n=100), 400, "n"),
        (dict(model=NAME, prompt="hi", stop=[str(i) for i in range(65)]), 400, "stop"),  # > --max-stop 64
        (dict(model=NAME, prompt="hi", logprobs=9), 400, "logprobs"),
        (dict(model=NAME, prompt="hi", best_of=3, temperature=0), 400, "best_of"),  # greedy samples are equal
        (dict(model=NAME, prompt="hi", stream="yes"), 400, "stream"),
        (dict(model="gpt-4", prompt="hi"), 404, "model"),
        (dict(prompt="hi"), 400, "model"),
        # every number is checked, nan and infinities included (Python's json reads NaN and Infinity)
        (dict(model=NAME, prompt="hi", seed=2**64), 400, "seed"),
        (dict(model=NAME, prompt="hi", seed=-1), 400, "seed"),
        (dict(model=NAME, prompt="hi", seed=1.5), 400, "seed"),
        (b'{"model": "tiny-gpt2", "prompt": "hi", "temperature": NaN}', 400, "temperature"),
        (b'{"model": "tiny-gpt2", "prompt": "hi", "temperature": 1' + b"0" * 400 + b"}", 400, "temperature"),
        (b'{"model": "tiny-gpt2", "prompt": "hi", "top_p": Infinity}', 400, "top_p"),
        (b'{"model": "tiny-gpt2", "prompt": "hi", "presence_penalty": NaN}', 400, "presence_penalty"),
        (b'{"model": "tiny-gpt2", "prompt": "hi", "frequency_penalty": -Infinity}', 400, "frequency_penalty"),
        (b'{"model": "tiny-gpt2", "prompt": "hi", "repetition_penalty": NaN}', 400, "repetition_penalty"),
        (
            b'{"model": "tiny-gpt2", "prompt": "hi", "repetition_penalty": Infinity}',
            400,
            "repetition_penalty",
        ),
        (b'{"model": "tiny-gpt2", "prompt": "hi", "logit_bias": {"1": NaN}}', 400, "logit_bias"),
        (b'{"model": "tiny-gpt2", "prompt": "hi", "length_penalty": NaN}', 400, "length_penalty"),
        (dict(model=NAME, prompt="hi", repetition_penalty=0), 400, "repetition_penalty"),
        (dict(model=NAME, prompt="hi", top_k=-2), 400, "top_k"),
        (dict(model=NAME, prompt="hi", top_k=1.5), 400, "top_k"),
        (dict(model=NAME, prompt="hi", min_p=1.5), 400, "min_p"),
        (dict(model=NAME, prompt="hi", min_tokens=-1), 400, "min_tokens"),
        (dict(model=NAME, prompt="hi", max_tokens=4, min_tokens=5), 400, "min_tokens"),
        (dict(model=NAME, prompt="hi", min_tokens=2, stop="x"), 400, "min_tokens"),
        (dict(model=NAME, prompt="hi", ignore_eos="yes"), 400, "ignore_eos"),
        (dict(model=NAME, prompt="hi", skip_special_tokens=0), 400, "skip_special_tokens"),
        (dict(model=NAME, prompt="hi", stop_token_ids=[99999]), 400, "stop_token_ids"),
        (dict(model=NAME, prompt="hi", stop_token_ids=5), 400, "stop_token_ids"),
        # vLLM's search fields, checked as vLLM 0.6.2 checks them (tests/test_serve_beam.py has the rest)
        (dict(model=NAME, prompt="hi", use_beam_search=True), 400, "best_of"),  # a beam width of 1
        (dict(model=NAME, prompt="hi", use_beam_search="yes"), 400, "use_beam_search"),
        (dict(model=NAME, prompt="hi", length_penalty=2.0), 400, "length_penalty"),  # beam search only
        # vLLM's other fields: refused by name unless at their "off" value, never silently dropped
        (dict(model=NAME, prompt="hi", include_stop_str_in_output=True), 400, "include_stop_str_in_output"),
        (dict(model=NAME, prompt="hi", prompt_logprobs=1), 400, "prompt_logprobs"),
        (dict(model=NAME, prompt="hi", allowed_token_ids=[1, 2]), 400, "allowed_token_ids"),
        (dict(model=NAME, prompt="hi", guided_regex="a+"), 400, "guided_regex"),
        (dict(model=NAME, prompt="hi", best_of=2, n=3), 400, "best_of"),
    ],
)
def test_bad_completion_requests_get_openai_errors(server, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        server.url + "/v1/completions", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]
    assert param in err["message"] or param == "body"  # the message names the field too


def test_bad_input_errors_name_the_problem_and_the_server_lives_on(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="context is 128 tokens"):
        client.completions.create(model=NAME, prompt="hi", max_tokens=500)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="beyond this model's context"):
        client.embeddings.create(model=NAME, input=[1] * 200)
    with pytest.raises(openai.BadRequestError, match="empty string"):
        client.embeddings.create(model=NAME, input=["ok", ""])
    big = httpx.post(server.url + "/v1/completions", json=dict(model=NAME, prompt="x" * (2 << 20)))
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b" " * 65536

    r = httpx.post(server.url + "/v1/completions", content=chunked())
    assert r.status_code == 413
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()
    assert (
        client.completions.create(model=NAME, prompt="still alive", max_tokens=3).usage.completion_tokens >= 1
    )


# --- disconnects, back-pressure, auth ---------------------------------------------------------------------


@pytest.fixture
def slow_engine(server, monkeypatch):
    """The server's engine with 20 ms decode steps, so a generation is surely still running when its client
    goes away (the tiny model would otherwise finish 120 tokens in a blink)."""
    engine = server.engine
    step = engine._step

    def slow_step():
        time.sleep(0.02)
        step()

    monkeypatch.setattr(engine, "_step", slow_step)
    return engine


def _wait_for_cancel(engine, before):
    deadline = time.time() + 5
    while engine.stats.cancelled == before and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats.cancelled == before + 1, "the engine never saw the cancel"
    time.sleep(0.1)
    assert not engine.active


# logit_bias keeps eos out, so only the disconnect can end these generations early
LONG = dict(model=NAME, prompt="Hi", max_tokens=120, temperature=1.0, logit_bias={"50256": -100})


def test_client_disconnect_mid_stream_stops_its_generation(server, slow_engine):
    cancelled, tokens = slow_engine.stats.cancelled, slow_engine.stats.tokens
    with (
        httpx.Client(timeout=10) as c,
        c.stream("POST", server.url + "/v1/completions", json=dict(LONG, stream=True)) as r,
    ):
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
    assert got[0].startswith("data: ")
    _wait_for_cancel(slow_engine, cancelled)
    assert slow_engine.stats.tokens - tokens < 60, "the generation ran on after the client left"


def test_client_disconnect_while_waiting_stops_its_generation(server, slow_engine):
    cancelled, tokens = slow_engine.stats.cancelled, slow_engine.stats.tokens
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=LONG, timeout=0.3)
    _wait_for_cancel(slow_engine, cancelled)
    assert slow_engine.stats.tokens - tokens < 80, "the generation ran on after the client left"


def test_an_engine_failure_fails_its_requests_not_the_server(server, monkeypatch):
    step = server.engine._step
    calls = []

    def broken_step():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        step()

    monkeypatch.setattr(server.engine, "_step", broken_step)
    r = httpx.post(
        server.url + "/v1/completions", json=dict(model=NAME, prompt="Hi", max_tokens=10), timeout=30
    )
    assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "server_error"
    monkeypatch.setattr(server.engine, "_step", step)
    ok = server.client().completions.create(model=NAME, prompt="Hi", max_tokens=3)
    assert ok.usage.completion_tokens >= 1


def test_full_queue_answers_429_with_retry_after(folder):
    s = Running(folder, max_batch=1, max_queue=1)
    try:
        body = dict(model=NAME, prompt="Hi", max_tokens=100, logit_bias={"50256": -100})

        def post(_):
            return httpx.post(s.url + "/v1/completions", json=body, timeout=60)

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(post, range(6)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and 429 in codes and set(codes) <= {200, 429}, codes
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "server_busy"
        assert s.engine.stats.rejected >= 1 and s.engine.stats.max_rows == 1
    finally:
        s.stop()


def test_api_key_is_required_on_every_request(folder):
    s = Running(folder, api_key="s3cret", max_batch=2)
    try:
        for path in ("/health", "/v1/models"):
            assert httpx.get(s.url + path).status_code == 401
        wrong = httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="nope").completions.create(model=NAME, prompt="hi", max_tokens=2)
        ok = s.client(api_key="s3cret").completions.create(model=NAME, prompt="hi", max_tokens=2)
        assert ok.choices[0].text is not None
    finally:
        s.stop()


# --- the command ------------------------------------------------------------------------------------------


def test_serve_without_the_extra_says_how_to_install(monkeypatch, capsys):
    import builtins

    from gpt2kit.cli import main

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name in ("uvicorn", "starlette"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert main(["serve", "--model", "whatever"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install "gpt2kit[serve]"' in err


def test_gpt2kit_serve_command_end_to_end(folder):
    """`python -m gpt2kit serve` binds 127.0.0.1, answers under --model as given and its folder name."""
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "gpt2kit",
        "serve",
        "--model",
        str(folder),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, (
                proc.stdout.read() if proc.poll() else "no start"
            )
            time.sleep(0.1)
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == str(folder)
        for name in (str(folder), folder.name):
            r = httpx.post(
                url + "/v1/completions", json=dict(model=name, prompt="Hi", max_tokens=2), timeout=30
            )
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode in (0, -15)


def test_six_stop_strings_as_lm_eval_sends_and_a_configurable_bound(server, folder, lm):
    """lm-evaluation-harness tasks send more than OpenAI's 4 stop strings; vLLM takes any number. The bound
    is --max-stop (64 by default), and past it the 400 names the flag."""
    client = server.client()
    prompt = "The quick brown fox"
    full = client.completions.create(model=NAME, prompt=prompt, max_tokens=30, temperature=0).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    stops = ["\n\n\n\n", "Question:", "<|im_end|>", "</s>", "zzzq", stop]  # 6, one of them hit
    resp = client.completions.create(model=NAME, prompt=prompt, max_tokens=30, temperature=0, stop=stops)
    assert resp.choices[0].text == full[: full.index(stop)] and resp.choices[0].finish_reason == "stop"
    s = Running(folder, max_stop=2)
    try:
        r = httpx.post(s.url + "/v1/completions", json=dict(model=NAME, prompt="hi", stop=["a", "b", "c"]))
        assert r.status_code == 400 and "--max-stop" in r.json()["error"]["message"]
    finally:
        s.stop()


def test_a_prompt_longer_than_the_context_is_named_with_its_excess(server):
    """The prompt, not max_tokens, is what is too long: the advice used to be "lower max_tokens to at most
    0", which cannot help."""
    ids = [[1] * (N_POSITIONS + 5)]
    r = httpx.post(server.url + "/v1/completions", json=dict(model=NAME, prompt=ids, max_tokens=16))
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "prompt" and err["code"] == "context_length_exceeded"
    assert f"has {N_POSITIONS + 5} tokens" in err["message"] and "shorten it by 21 tokens" in err["message"]
    several = [[1, 2], [1] * N_POSITIONS]
    r = httpx.post(server.url + "/v1/completions", json=dict(model=NAME, prompt=several, max_tokens=1))
    assert "prompt 1 has" in r.json()["error"]["message"]
    # echo scoring of a prompt that exactly fills the context is fine; a longer one is not
    ok = httpx.post(
        server.url + "/v1/completions",
        json=dict(model=NAME, prompt=[[1] * N_POSITIONS], max_tokens=0, echo=True),
    )
    assert ok.status_code == 200, ok.text


def test_idle_and_slow_clients_cannot_lock_the_server_out(folder):
    """330 connections that sent nothing, or a header byte a second, made every real request get 503. Now
    a request head has a deadline and idle connections are closed first when the server is full: with 300
    of them open, real requests keep succeeding."""
    s = Running(folder, head_timeout=2.0, max_queue=64, max_batch=8)  # uvicorn's limit: 4 * 72 + 16 = 304
    hogs: list[socket.socket] = []
    stop = threading.Event()

    def trickle(socks):  # one header byte a second on each, never finishing the head
        while not stop.wait(1.0):
            for h in socks:
                with contextlib.suppress(OSError):  # closed by the server: as it should be
                    h.send(b"X")

    try:
        for i in range(300):
            h = socket.create_connection(("127.0.0.1", s.port))
            if i % 2:
                h.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            hogs.append(h)
        thread = threading.Thread(target=trickle, args=(hogs[1::2],), daemon=True)
        thread.start()
        client = s.client(timeout=20)
        for _ in range(8):
            t0 = time.time()
            r = client.completions.create(model=NAME, prompt="hello", max_tokens=2, temperature=0)
            assert r.choices[0].text is not None and time.time() - t0 < 10
        # the hogs were closed: idle-first eviction, or their head deadline (2 s here)
        time.sleep(2.5)
        closed = 0
        for h in hogs:
            h.settimeout(0.5)
            try:
                closed += h.recv(1) == b""
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
            except TimeoutError:
                pass
        assert closed == len(hogs), f"{len(hogs) - closed} idle or slow connections are still open"
    finally:
        stop.set()
        for h in hogs:
            h.close()
        s.stop()


def test_a_trickled_body_gets_408(folder, monkeypatch):
    monkeypatch.setattr("gpt2kit.serve.app.BODY_TIMEOUT_S", 1.0)
    s = Running(folder)
    try:
        with socket.create_connection(("127.0.0.1", s.port)) as c:
            c.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            c.settimeout(10)
            reply = b""
            while b"request_timeout" not in reply and (chunk := c.recv(65536)):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
    finally:
        s.stop()


# --- chat completions -------------------------------------------------------------------------------------

# ChatML written as plain text (GPT-2 has no chat tokens); it refuses a conversation opened by the assistant,
# as real templates refuse what they were not trained on, and reads an optional variable (chat_template_kwargs).
CHATML = (
    "{% if greeting is defined %}{{ greeting }}\n{% endif %}"
    "{% if messages[0]['role'] == 'assistant' %}"
    "{{ raise_exception('the conversation must not start with the assistant') }}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a fox."},
    {"role": "assistant", "content": "Reynard."},
    {"role": "user", "content": "Another one?"},
]


@pytest.fixture(scope="module")
def chat_template_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chatml.jinja"
    path.write_text(CHATML, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_server(folder, chat_template_file):
    s = Running(folder, max_batch=8, chat_template=chat_template_file)
    yield s
    s.stop()


def chat_prompt_ids(lm, messages, **kw):
    _, tok = lm
    kw.setdefault("add_generation_prompt", True)
    text = tok.apply_chat_template(messages, chat_template=CHATML, tokenize=False, **kw)
    return tok.encode(text, add_special_tokens=False)


def test_chat_greedy_equals_generate_whole_and_streamed(chat_server, lm):
    """The messages are rendered by the template and generated like a completion: greedy output equals
    generate() on the rendered prompt, and the streamed deltas add up to the whole message."""
    ids = chat_prompt_ids(lm, CHAT)
    want_ids, want_text = greedy_reference(lm, ids, 20)
    client = chat_server.client()
    kw = dict(model=NAME, messages=CHAT, max_tokens=20, temperature=0)
    resp = client.chat.completions.create(**kw)
    c = resp.choices[0]
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert c.message.role == "assistant" and c.message.content == want_text
    assert c.finish_reason == ("stop" if 50256 in want_ids else "length") and c.index == 0
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (len(ids), len(want_ids))
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want_text
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [c.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want_ids)
    # as a curl user sees it: server-sent events with OpenAI's delta objects, then [DONE]
    with httpx.stream("POST", chat_server.url + "/v1/chat/completions", json=dict(kw, stream=True)) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == want_text
    plain = httpx.post(chat_server.url + "/v1/chat/completions", json=kw, timeout=30).json()
    assert plain["choices"][0]["message"] == {"role": "assistant", "content": want_text}


def test_chat_sampling_fields_n_seed_stop_and_lengths(chat_server, lm):
    client = chat_server.client()
    kw = dict(model=NAME, messages=CHAT, max_tokens=12, temperature=1.0, top_p=0.95, n=3, seed=42)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2] and len({c.message.content for c in a.choices}) > 1
    # a stop string cuts the message and is not returned
    _, full = greedy_reference(lm, chat_prompt_ids(lm, CHAT), 30)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    r = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].message.content == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    # max_completion_tokens (OpenAI's newer name) and max_tokens both bound the length
    no_eos = {"50256": -100}
    for field in ("max_completion_tokens", "max_tokens"):
        r = client.chat.completions.create(
            model=NAME, messages=CHAT, temperature=0, logit_bias=no_eos, **{field: 5}
        )
        assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (5, "length"), field
    # without either, a reply may run to the end of the context, as OpenAI's and vLLM's
    r = client.chat.completions.create(model=NAME, messages=CHAT, temperature=0, logit_bias=no_eos)
    assert r.usage.prompt_tokens + r.usage.completion_tokens == N_POSITIONS


def test_chat_add_generation_prompt_continue_final_message_and_tokenize(chat_server, lm):
    url = chat_server.url
    with_prompt = chat_prompt_ids(lm, CHAT)
    without = chat_prompt_ids(lm, CHAT, add_generation_prompt=False)
    assert len(without) < len(with_prompt)
    r = httpx.post(url + "/tokenize", json={"model": NAME, "messages": CHAT}).json()
    assert r["tokens"] == with_prompt and r["count"] == len(with_prompt)
    r = httpx.post(url + "/tokenize", json={"messages": CHAT, "add_generation_prompt": False}).json()
    assert r["tokens"] == without
    body = dict(model=NAME, messages=CHAT, max_tokens=3, temperature=0, add_generation_prompt=False)
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).json()
    assert r["usage"]["prompt_tokens"] == len(without)
    # continue_final_message: the assistant's last message stays open and the model carries on from it
    partial = [*CHAT[:3], {"role": "assistant", "content": "Reynard and"}]
    open_ids = chat_prompt_ids(lm, partial, add_generation_prompt=False, continue_final_message=True)
    assert lm[1].decode(open_ids).endswith("Reynard and")
    body = dict(model=NAME, messages=partial, max_tokens=8, temperature=0, add_generation_prompt=False,
                continue_final_message=True)  # fmt: skip
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30).json()
    assert r["usage"]["prompt_tokens"] == len(open_ids)
    assert r["choices"][0]["message"]["content"] == greedy_reference(lm, open_ids, 8)[1]
    # chat_template_kwargs are visible in the template
    body = {"messages": CHAT, "chat_template_kwargs": {"greeting": "Good morning!"}}
    r = httpx.post(url + "/tokenize", json=body).json()
    assert r["tokens"] == lm[1].encode("Good morning!\n") + with_prompt
    info = httpx.get(url + "/tokenizer_info").json()
    assert info["chat_template"] == CHATML and info["eos_token"] == "<|endoftext|>"
    assert info["model_max_length"] == N_POSITIONS


def test_chat_logprobs(chat_server, lm):
    model, _ = lm
    ids = chat_prompt_ids(lm, CHAT)
    r = chat_server.client().chat.completions.create(
        model=NAME, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    with torch.no_grad():
        first = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    assert content[0].logprob == pytest.approx(float(first.max()), abs=1e-4)
    for entry in content:  # greedy: the chosen token is the most likely, listed first of the 3
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == entry.logprob
        assert entry.bytes == list(entry.token.encode("utf-8"))
    plain = chat_server.client().chat.completions.create(model=NAME, messages=CHAT, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_chat_without_a_template_is_a_400_naming_the_flag(server):
    with pytest.raises(openai.BadRequestError, match="--chat-template"):
        server.client().chat.completions.create(model=NAME, messages=CHAT, max_tokens=2)
    r = httpx.post(server.url + "/v1/chat/completions", json=dict(model=NAME, messages=CHAT))
    err = r.json()["error"]
    assert r.status_code == 400 and set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "chat_template_missing" and "--chat-template FILE" in err["message"]
    r = httpx.post(server.url + "/tokenize", json=dict(messages=CHAT))
    assert r.status_code == 400 and "--chat-template" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/tokenizer_info").json()["chat_template"] is None


def test_the_tokenizer_folders_chat_template_is_used(folder, tmp_path, lm):
    """Without --chat-template the server takes tokenizer_config.json's chat_template, as vLLM does."""
    import shutil

    copy = tmp_path / "with-template"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=CHATML)))
    s = Running(copy, max_batch=2)
    try:
        r = s.client().chat.completions.create(model=NAME, messages=CHAT, max_tokens=6, temperature=0)
        ids = chat_prompt_ids(lm, CHAT)
        assert r.usage.prompt_tokens == len(ids)
        assert r.choices[0].message.content == greedy_reference(lm, ids, 6)[1]
    finally:
        s.stop()


@pytest.mark.parametrize(
    "body, param, words",
    [
        (dict(model=NAME), "messages", "non-empty list"),
        (dict(model=NAME, messages=[]), "messages", "non-empty list"),
        (dict(model=NAME, messages=["hi"]), "messages", "'role' and 'content'"),
        (dict(model=NAME, messages=[{"role": "robot", "content": "hi"}]), "messages", "role"),
        (dict(model=NAME, messages=[{"role": "user", "content": 5}]), "messages", "content"),
        (dict(model=NAME, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
         "messages", "text only"),
        (dict(model=NAME, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]), "messages",
         "tool"),
        (dict(model=NAME, messages=[{"role": "assistant", "content": "Hi"}]), "messages",
         "must not start with the assistant"),  # the template's own raise_exception
        (dict(model=NAME, messages=CHAT, tools=[{"type": "function"}]), "tools", "tool calling"),
        (dict(model=NAME, messages=CHAT, chat_template="{{ 1 }}"), "chat_template", "--chat-template"),
        (dict(model=NAME, messages=CHAT, echo=True), "echo", "echo"),
        (dict(model=NAME, messages=CHAT, n=100), "n", "'n'"),
        (dict(model=NAME, messages=CHAT, temperature=3), "temperature", "temperature"),
        (dict(model=NAME, messages=CHAT, max_tokens=0), "max_tokens", "max_tokens"),
        (dict(model=NAME, messages=CHAT, max_completion_tokens=10_000), "max_completion_tokens",
         "context is 128 tokens"),
        (dict(model=NAME, messages=[{"role": "user", "content": "word " * 200}]), "messages",
         "shorten them by"),
        (dict(model=NAME, messages=[{"role": "user", "content": "word " * 200}], max_tokens=4), "messages",
         "shorten it by"),
        (dict(model=NAME, messages=CHAT, max_tokens=-1, max_completion_tokens=4), "max_tokens",
         "max_tokens"),
        (dict(model=NAME, messages=CHAT, stop=[str(i) for i in range(65)]), "stop", "--max-stop"),
        (dict(model=NAME, messages=CHAT, top_logprobs=2), "top_logprobs", "'logprobs': true"),
        (dict(model=NAME, messages=CHAT, logprobs=True, top_logprobs=30), "top_logprobs", "[0, 20]"),
        (dict(model=NAME, messages=CHAT, continue_final_message=True), "continue_final_message",
         "add_generation_prompt"),
        (dict(model=NAME, messages=CHAT, chat_template_kwargs={"messages": []}), "chat_template_kwargs",
         "messages"),
        (dict(model=NAME, messages=CHAT, stream_options={"include_usage": True}), "stream_options",
         "stream"),
        (dict(model=NAME, messages=CHAT, seed=-1), "seed", "seed"),
        (dict(model="gpt-4", messages=CHAT), "model", "does not exist"),
    ],
)  # fmt: skip
def test_bad_chat_requests_get_openai_errors(chat_server, body, param, words):
    r = httpx.post(chat_server.url + "/v1/chat/completions", json=body)
    assert r.status_code == (404 if param == "model" else 400), r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert words in err["message"], err["message"]


def test_chat_template_flag_errors_are_one_line(folder, tmp_path, capsys):
    from gpt2kit.cli import main

    assert main(["serve", "--model", str(folder), "--chat-template", str(tmp_path / "nope.jinja")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--chat-template" in err and "no such file" in err
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }}")  # no endfor
    assert main(["serve", "--model", str(folder), "--chat-template", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not valid Jinja" in err and str(bad) in err


# --- metrics ----------------------------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple, float]:
    """GET /metrics, parsed: {(sample name, (sorted labels)): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _idle(engine) -> None:
    deadline = time.time() + 10
    while (engine.active or engine.queued) and time.time() < deadline:
        time.sleep(0.01)
    assert not engine.active and not engine.queued


def test_metrics_move_by_what_the_requests_did(chat_server, lm):
    pytest.importorskip("prometheus_client")
    _, tok = lm
    _idle(chat_server.engine)
    url = chat_server.url
    before = scrape(url)
    assert before[("gpt2kit:num_requests_running", ())] == 0
    assert before[("gpt2kit:num_requests_waiting", ())] == 0
    client = chat_server.client()
    no_eos = {"50256": -100}
    prompt = "The quick brown fox"
    client.completions.create(model=NAME, prompt=prompt, max_tokens=7, temperature=0, logit_bias=no_eos)
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=CHAT, max_tokens=5, temperature=0, logit_bias=no_eos, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    client.embeddings.create(model=NAME, input="four tokens of text")
    r = httpx.post(url + "/v1/completions", json=dict(model=NAME, prompt="hi", temperature=9))
    assert r.status_code == 400
    after = scrape(url)

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "gpt2kit:http_requests_total"
    assert moved(requests, endpoint="/v1/completions", status="200") == 1
    assert moved(requests, endpoint="/v1/completions", status="400") == 1
    assert moved(requests, endpoint="/v1/chat/completions", status="200") == 1
    assert moved(requests, endpoint="/v1/embeddings", status="200") == 1
    assert moved(requests, endpoint="/metrics", status="200") == 1  # the first scrape
    prompt_tokens = len(tok.encode(prompt)) + len(chat_prompt_ids(lm, CHAT))
    assert moved("gpt2kit:prompt_tokens_total") == prompt_tokens
    assert moved("gpt2kit:generation_tokens_total") == 7 + 5
    assert moved("gpt2kit:embedding_tokens_total") == len(tok.encode("four tokens of text"))
    for endpoint in ("/v1/completions", "/v1/chat/completions"):
        assert moved("gpt2kit:time_to_first_token_seconds_count", endpoint=endpoint) == 1
        assert moved("gpt2kit:e2e_request_latency_seconds_count", endpoint=endpoint) == 1
        assert moved("gpt2kit:e2e_request_latency_seconds_bucket", endpoint=endpoint, le="+Inf") == 1
        assert (
            0
            < moved("gpt2kit:time_to_first_token_seconds_sum", endpoint=endpoint)
            <= moved("gpt2kit:e2e_request_latency_seconds_sum", endpoint=endpoint)
        )
    assert moved("gpt2kit:e2e_request_latency_seconds_count", endpoint="/v1/embeddings") == 1
    # unknown paths share one label, so a scanner cannot blow up the series
    httpx.get(url + "/no/such/path/1")
    httpx.get(url + "/no/such/path/2")
    assert scrape(url)[(requests, (("endpoint", "other"), ("status", "404")))] >= 2


def test_metrics_gauges_show_running_and_waiting_requests(folder, monkeypatch):
    pytest.importorskip("prometheus_client")
    s = Running(folder, max_batch=1, max_queue=4)
    step = s.engine._step

    def slow_step():
        time.sleep(0.02)
        step()

    monkeypatch.setattr(s.engine, "_step", slow_step)
    body = dict(model=NAME, prompt="Hi", max_tokens=60, logit_bias={"50256": -100})
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(httpx.post, s.url + "/v1/completions", json=body, timeout=60)]
            time.sleep(0.3)
            futures.append(pool.submit(httpx.post, s.url + "/v1/completions", json=body, timeout=60))
            time.sleep(0.3)
            during = scrape(s.url)
            assert [f.result().status_code for f in futures] == [200, 200]
        assert during[("gpt2kit:num_requests_running", ())] == 1
        assert during[("gpt2kit:num_requests_waiting", ())] == 1
        _idle(s.engine)
        after = scrape(s.url)
        assert after[("gpt2kit:num_requests_running", ())] == 0
        assert after[("gpt2kit:generation_tokens_total", ())] == 120
    finally:
        s.stop()


def test_metrics_without_prometheus_client_say_what_to_install(folder, monkeypatch):
    """prometheus_client is optional: without it the server runs and /metrics says how to get it."""
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    s = Running(folder, max_batch=2)
    try:
        r = httpx.get(s.url + "/metrics")
        err = r.json()["error"]
        assert r.status_code == 501 and err["code"] == "metrics_unavailable"
        assert 'pip install "gpt2kit[serve]"' in err["message"]
        ok = s.client().completions.create(model=NAME, prompt="Hi", max_tokens=2)
        assert ok.usage.completion_tokens >= 1
    finally:
        s.stop()
