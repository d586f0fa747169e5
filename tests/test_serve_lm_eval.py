"""lm-evaluation-harness against `gpt2kit serve`, end to end.

`gpt2kit serve` runs in a subprocess on the bundled demo model (saved in float32), and lm-evaluation-harness
scores it through its `local-completions` backend on three tasks written here as local YAML + JSONL files
(no download): a loglikelihood multiple-choice task, a loglikelihood_rolling perplexity task (one text long
enough for several rolling windows) and a generate_until task with 6 stop strings. The proof is that every
score, and every sample's loglikelihood and generated text, equals what lm-evaluation-harness's own `hf`
backend computes on the same checkpoint through transformers.

Slow (about a minute) and optional: it needs lm-evaluation-harness, pip install "gpt2kit[lmeval]".
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
httpx = pytest.importorskip("httpx")
INSTALL = 'pip install "gpt2kit[lmeval]"'


@pytest.fixture(scope="module")
def lm_eval():
    """lm-evaluation-harness with both backends, or a skip saying how to install it (imported only when the
    test runs: it is heavy, and the module is collected even when slow tests are deselected)."""
    module = pytest.importorskip("lm_eval", reason=f"lm-evaluation-harness is not installed: {INSTALL}")
    pytest.importorskip("accelerate", reason=f"lm_eval's hf backend needs accelerate: {INSTALL}")
    pytest.importorskip("tenacity", reason=f"lm_eval's API backends need tenacity: {INSTALL}")
    pytest.importorskip("yaml", reason=f"lm_eval's task files need pyyaml: {INSTALL}")
    return module


# The demo model writes WordNet glosses ("guitar (noun): a stringed instrument ...; "an example""), so the
# prompts are glosses' heads and the stop strings are ones its text actually reaches.
MC = [
    (
        "guitar (noun):",
        [" a stringed musical instrument", " a large body of salt water", " a unit of time"],
        0,
    ),
    ("ocean (noun):", [" a period of sleep", " a large body of water", " a tool for cutting"], 1),
    ("run (verb):", [" a kind of tree", " a yellow color", " move fast by using one's feet"], 2),
    ("happy (adjective):", [" enjoying or showing joy", " made of metal", " relating to the moon"], 0),
    ("hammer (noun):", [" a feeling of fear", " a hand tool with a heavy head", " a small bird"], 1),
    ("quickly (adverb):", [" with little or no delay", " in a sad manner", " under the ground"], 0),
]
TEXTS = [
    "guitar (noun): a stringed instrument usually having six strings; played by strumming or plucking",
    "dog (noun): a member of the genus Canis that has been domesticated by man since prehistoric times",
    # > 254 tokens: several rolling windows, scored the same way by both backends
    " ".join(
        f"{w} (noun): a word that names a thing; a person or a place or an idea that can be counted"
        for w in ("tree", "stone", "river", "house", "bird", "cloud", "field", "wall", "road", "ship", "lamp")
    ),
]
GEN = [
    ("guitar (noun):", " a stringed instrument"),
    ("dog (noun):", " a member of the genus Canis"),
    ("run (verb):", " move fast"),
    ("ocean (noun):", " a large body of water"),
    ("red (adjective):", " of the color of blood"),
    ("slowly (adverb):", " without speed"),
]
UNTIL = ["\n", ";", '"', "Question:", "</s>", "<|im_end|>"]  # 6: more than OpenAI's limit of 4


def _write_tasks(root) -> list[str]:
    import yaml

    data = {
        "mc": [dict(question=q, choices=c, answer=a) for q, c, a in MC],
        "ppl": [dict(text=t) for t in TEXTS],
        "gen": [dict(question=q, answer=a) for q, a in GEN],
    }
    for name, rows in data.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tasks = {
        "gpt2kit_mc": dict(
            output_type="multiple_choice",
            doc_to_text="{{question}}",
            doc_to_choice="{{choices}}",
            doc_to_target="{{answer}}",
            metric_list=[dict(metric="acc"), dict(metric="acc_norm")],
            data="mc",
        ),
        "gpt2kit_ppl": dict(
            output_type="loglikelihood_rolling",
            doc_to_text="",
            doc_to_target="{{text}}",
            metric_list=[dict(metric=m) for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
            data="ppl",
        ),
        "gpt2kit_gen": dict(
            output_type="generate_until",
            doc_to_text="{{question}}",
            doc_to_target="{{answer}}",
            generation_kwargs=dict(until=UNTIL, max_gen_toks=24, do_sample=False, temperature=0.0),
            metric_list=[dict(metric="exact_match")],
            data="gen",
        ),
    }
    for name, task in tasks.items():
        files = dict(
            data_files=dict(test=str(root / f"{task.pop('data')}.jsonl")), cache_dir=str(root / "hf")
        )
        config = dict(task=name, dataset_path="json", dataset_kwargs=files, test_split="test", **task)
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return list(tasks)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The demo model in float32 (what both backends then read) with GPT-2's tokenizer files."""
    import torch

    from gpt2kit import AutoModelForCausalLM, GPT2TokenizerFast

    path = tmp_path_factory.mktemp("lm-eval-model")
    AutoModelForCausalLM.from_pretrained("gpt2kit-demo", dtype=torch.float32).save_pretrained(path)
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def served(checkpoint, tmp_path_factory):
    """`gpt2kit serve` in a subprocess: its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("lm-eval-server") / "server.log"
    cmd = [sys.executable, "-m", "gpt2kit", "serve", "--model", str(checkpoint), "--port", str(port),
           "--weights", "float", "--log-level", "warning"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _evaluate(lm_eval, model: str, model_args: str, tasks: list[str], root) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=TaskManager(include_path=str(root)),
        batch_size=1 if model == "hf" else 4,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )


def _compare(api: dict, hf: dict, tasks: list[str], tokenizer) -> None:
    for task in tasks:
        for key, value in api["results"][task].items():
            if "," in key and "stderr" not in key:
                print(f"  {task} {key}: {value!r} | {hf['results'][task][key]!r}")
                assert value == pytest.approx(hf["results"][task][key], rel=1e-5, abs=1e-6), (task, key)

    def by_doc(result, task):
        return {s["doc_id"]: s for s in result["samples"][task]}

    api_mc, hf_mc = by_doc(api, "gpt2kit_mc"), by_doc(hf, "gpt2kit_mc")
    assert len(api_mc) == len(MC)
    worst = 0.0
    for doc, sample in api_mc.items():
        got = [ll for ll, _ in sample["filtered_resps"]]
        want = [ll for ll, _ in hf_mc[doc]["filtered_resps"]]
        worst = max(worst, *(abs(a - b) for a, b in zip(got, want)))
        assert got == pytest.approx(want, abs=1e-3), doc
        assert got.index(max(got)) == want.index(max(want)), doc
    api_ppl, hf_ppl = by_doc(api, "gpt2kit_ppl"), by_doc(hf, "gpt2kit_ppl")
    assert len(api_ppl) == len(TEXTS)
    for doc, sample in api_ppl.items():
        got, want = sample["filtered_resps"][0], hf_ppl[doc]["filtered_resps"][0]
        worst = max(worst, abs(got - want))
        assert got == pytest.approx(want, rel=1e-5), doc
    print(f"  largest loglikelihood difference: {worst:.2e}")
    api_gen, hf_gen = by_doc(api, "gpt2kit_gen"), by_doc(hf, "gpt2kit_gen")
    texts = [api_gen[d]["filtered_resps"][0] for d in sorted(api_gen)]
    assert len(texts) == len(GEN) and texts == [hf_gen[d]["filtered_resps"][0] for d in sorted(hf_gen)]
    print(f"  generations: {texts}")
    assert all(texts), "empty generations prove nothing"
    # some generation ended before max_gen_toks: at one of the 6 stop strings the server was sent
    assert any(len(tokenizer.encode(t)) < 24 for t in texts), texts


def test_lm_eval_scores_through_the_server_equal_its_hf_backend(
    lm_eval, checkpoint, served, tmp_path, monkeypatch
):
    from gpt2kit import GPT2TokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    tasks = _write_tasks(tmp_path)
    hf = _evaluate(
        lm_eval, "hf", f"pretrained={checkpoint},dtype=float32,device=cpu,max_length=254", tasks, tmp_path
    )
    # lm_eval's API backends send one generated token with each scoring request, so max_length is the
    # context (256) and it scores windows of 254 tokens; the hf backend's max_length is that window.
    # Tokens come from the checkpoint's tokenizer files, or from the server itself (lm_eval's "remote"
    # backend, through /tokenizer_info and /tokenize; what it picks by default when the server has them).
    common = (
        f"model={checkpoint},base_url={served}/v1/completions,max_length=256,num_concurrent=2,max_retries=1"
    )
    for backend in (f"tokenizer_backend=huggingface,tokenizer={checkpoint}", "tokenizer_backend=remote"):
        api = _evaluate(lm_eval, "local-completions", f"{common},{backend}", tasks, tmp_path)
        print(
            f"\nscores (local-completions, {backend.split(',')[0]}, via gpt2kit serve | hf via transformers):"
        )
        _compare(api, hf, tasks, GPT2TokenizerFast.from_pretrained(checkpoint))
