"""The Trainer: one step equals the same step by hand, resume is exact, accumulation and DDP agree,
schedules, metrics, early stopping, and the saved folder loads in transformers."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gpt2kit import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from gpt2kit.training.config import TrainingConfig
from gpt2kit.training.trainer import Trainer, _Dist, _Metrics, epoch_micro_batches, lr_factor, param_groups

TINY = dict(vocab_size=64, n_positions=32, n_layer=2, n_embd=32, n_head=2)


class Rows(torch.utils.data.Dataset):
    """n random rows of T token ids; labels = input_ids (the model shifts)."""

    def __init__(self, n: int, T: int = 16, seed: int = 0, fail_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, TINY["vocab_size"], (n, T), generator=g)
        self.fail_at = fail_at
        self.calls = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while a batch is being built
        return {"input_ids": self.x[i], "labels": self.x[i]}


def lm(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**{**TINY, **overrides}))


def cfg(tmp_path: Path, **kw) -> TrainingConfig:
    base = dict(output_dir=str(tmp_path / "out"), progress=False, plot=False, log_every=1)
    return TrainingConfig(**{**base, **kw})


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if atol and k.endswith("attn.c_attn.bias"):
            # The key bias's true gradient is 0 (softmax ignores a constant shift), so AdamW's normalised
            # update turns rounding noise into steps of up to lr: compare it loosely, the rest tightly.
            n = sa[k].numel() // 3
            torch.testing.assert_close(sa[k][n : 2 * n], sb[k][n : 2 * n], atol=1e-3, rtol=0, msg=k)
            sa[k], sb[k] = torch.cat([sa[k][:n], sa[k][2 * n :]]), torch.cat([sb[k][:n], sb[k][2 * n :]])
        if atol == 0.0:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=k)


def test_one_step_equals_the_same_step_by_hand(tmp_path):
    model = lm(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    by_hand = copy.deepcopy(model)
    data = Rows(4)
    c = cfg(
        tmp_path, max_steps=1, batch_size=4, lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, schedule="constant"
    )
    Trainer(model, data, config=c).fit()

    decay = [p for p in by_hand.parameters() if p.dim() >= 2]
    no_decay = [p for p in by_hand.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-2
    )
    loss = by_hand(input_ids=data.x, labels=data.x).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 0.5)
    opt.step()
    assert_same_weights(model, by_hand, atol=1e-6)
    # and it really moved: a no-op trainer would fail here
    assert not torch.allclose(model.transformer.wte.weight, lm(resid_pdrop=0.0).transformer.wte.weight)


def test_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    a, b = lm(**no_dropout), lm(**no_dropout)
    data = Rows(8)
    Trainer(a, data, config=cfg(tmp_path / "a", max_steps=4, batch_size=4, lr=1e-2)).fit()
    Trainer(b, data, config=cfg(tmp_path / "b", max_steps=4, batch_size=2, grad_accum=2, lr=1e-2)).fit()
    assert_same_weights(a, b, atol=2e-6)


def test_compiled_training_equals_eager_and_still_checks_ids(tmp_path):
    """compile=True runs the same arithmetic (up to fusion rounding), saves plain names, keeps the id check."""
    no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    eager, compiled = lm(**no_dropout), lm(**no_dropout)
    data = Rows(8)
    Trainer(eager, data, config=cfg(tmp_path / "e", max_steps=3, batch_size=4, lr=1e-2)).fit()
    t = Trainer(compiled, data, config=cfg(tmp_path / "c", max_steps=3, batch_size=4, lr=1e-2, compile=True))
    assert type(t._step_model).__name__ == "OptimizedModule"  # really compiled, not eager again
    t.fit()
    assert_same_weights(eager, compiled, atol=1e-5)
    assert not torch.allclose(compiled.transformer.wte.weight, lm().transformer.wte.weight)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "c" / "out")  # no "_orig_mod." prefixes in the save
    assert_same_weights(reloaded, compiled)

    bad = Rows(4)
    bad.x[1, 3] = TINY["vocab_size"] + 5
    with pytest.raises(ValueError, match=f"token id {TINY['vocab_size'] + 5}, outside the vocabulary"):
        Trainer(lm(), bad, config=cfg(tmp_path / "b", max_steps=1, batch_size=4, compile=True)).fit()


class ShapeMismatch(Rows):
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": torch.cat([self.x[i], self.x[i][:1]])}  # one label too many


class BadClassLabels(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.arange(1, 7), "labels": torch.tensor(7 if i == 2 else 1)}


def test_compiled_training_reports_the_data_error_not_a_compiler_error(tmp_path):
    """A bad batch under compile=True gets the eager model's message, not "train without compile"."""
    c = cfg(tmp_path / "s", max_steps=1, batch_size=4, compile=True)
    with pytest.raises(ValueError, match="batch_size") as info:
        Trainer(lm(), ShapeMismatch(4), config=c).fit()
    assert "without compile" not in str(info.value)
    clf = GPT2ForSequenceClassification(GPT2Config(**TINY, num_labels=3, pad_token_id=0))
    c = cfg(tmp_path / "c", max_steps=1, batch_size=4, compile=True)
    with pytest.raises(ValueError, match=r"class ids in \[0, num_labels=3\) or -100, got 7"):
        Trainer(clf, BadClassLabels(), config=c).fit()


def _train(tmp_path, callbacks=(), data=None, **kw) -> GPT2LMHeadModel:
    model = lm(seed=1)  # dropout on: resume must restore the RNG too
    c = cfg(tmp_path, max_steps=6, batch_size=2, lr=5e-3, warmup_steps=2, schedule="cosine", **kw)
    Trainer(model, data or Rows(6), config=c, callbacks=callbacks).fit()
    return model


def test_resume_after_interrupt_between_steps_is_exact(tmp_path):
    whole = _train(tmp_path / "whole")

    def stop_at_3(trainer, event, info):
        if event == "step_end" and info["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", callbacks=[stop_at_3])
    assert (tmp_path / "cut/out/checkpoints/step-00000003").is_dir()
    seen = []
    resumed = _train(tmp_path / "cut", callbacks=[lambda t, e, i: seen.append((e, i.get("step")))])
    assert ("resume", 3) in seen
    assert_same_weights(whole, resumed)
    lines = [json.loads(x) for x in (tmp_path / "cut/out/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]  # no step logged twice


def test_compiled_training_resumes_exactly(tmp_path):
    """compile=True with dropout: the RNG snapshot in the checkpoint also drives the compiled graph."""
    whole = _train(tmp_path / "whole", compile=True)

    def stop_at_3(trainer, event, info):
        if event == "step_end" and info["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", callbacks=[stop_at_3], compile=True)
    resumed = _train(tmp_path / "cut", compile=True)
    assert_same_weights(whole, resumed)


def test_resume_after_interrupt_mid_step_is_exact(tmp_path):
    whole = _train(tmp_path / "whole")
    # 2 examples per step: the 9th item fetched is in step 5, after 4 finished steps
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", data=Rows(6, fail_at=9))
    assert sorted(p.name for p in (tmp_path / "cut/out/checkpoints").iterdir()) == ["step-00000004"]
    resumed = _train(tmp_path / "cut")
    assert_same_weights(whole, resumed)


def test_periodic_checkpoints_are_pruned_and_resume_skips_done_work(tmp_path):
    _train(tmp_path, save_every=2, keep_checkpoints=2)
    names = sorted(p.name for p in (tmp_path / "out/checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000006"]
    seen = []
    _train(tmp_path, callbacks=[lambda t, e, i: seen.append(e)])
    assert "step_end" not in seen  # all 6 steps were done: nothing to replay


def test_lr_schedules():
    # transformers' linear warmup from 0, then decay to the floor at the last step
    assert [lr_factor(s, 10, 2, "linear", 0.0) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    assert lr_factor(6, 10, 2, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(7, 10, 0, "constant", 0.0) == 1.0


def test_weight_decay_only_on_matrices():
    model = lm()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # tied wte/lm_head counted once


def test_data_order_is_a_permutation_split_across_ranks():
    one = epoch_micro_batches(10, 3, 7, 2, world=1, rank=0)
    assert sorted(i for b in one for i in b) == list(range(10))
    assert one == epoch_micro_batches(10, 3, 7, 2, world=1, rank=0)  # seeded
    assert one != epoch_micro_batches(10, 4, 7, 2, world=1, rank=0)  # differs per epoch
    r0 = epoch_micro_batches(10, 3, 7, 2, world=2, rank=0)
    r1 = epoch_micro_batches(10, 3, 7, 2, world=2, rank=1)
    assert len(r0) == len(r1) == 3  # padded to a multiple of micro * world
    assert r0[:2] == one[0:4:2] and r1[:2] == one[1:4:2]  # micro-batch k -> rank k % world


def test_classification_metrics_accuracy_and_f1():
    m = _Metrics()
    # labels 0 0 1 1 1, predictions 0 1 1 1 0
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    m.add_cls(logits, torch.tensor([0, 0, 1, 1, 1]))
    r = m.result(_Dist())
    assert r["eval_accuracy"] == pytest.approx(3 / 5)
    # class 1: precision 2/3, recall 2/3 -> F1 2/3; class 0: precision 1/2, recall 1/2 -> 1/2
    assert r["eval_f1"] == pytest.approx(2 / 3)
    assert r["eval_f1_macro"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1, 1, 1]))
    assert r["eval_loss"] == pytest.approx(ce.item(), rel=1e-6)


def test_lm_eval_metrics_match_a_direct_computation(tmp_path):
    model = lm()
    data = Rows(5)
    trainer = Trainer(model, data, data, cfg(tmp_path, max_steps=1, batch_size=2))
    r = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=data.x).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), data.x[:, 1:].reshape(-1))
    assert r["eval_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert r["eval_perplexity"] == pytest.approx(math.exp(ce.item()), rel=1e-5)
    assert r["eval_tokens"] == 5 * 15


def test_early_stopping_stops_and_keeps_the_best(tmp_path):
    model = lm()
    train, held_out = Rows(4, seed=0), Rows(4, seed=99)  # memorising noise makes held-out loss rise
    c = cfg(tmp_path, max_steps=200, batch_size=4, lr=3e-2, eval_every=5, early_stopping_patience=2)
    r = Trainer(model, train, held_out, c).fit()
    assert r.stopped_early and r.steps < 200
    evals = [json.loads(x) for x in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    losses = [e["eval_loss"] for e in evals if "eval_loss" in e]
    assert r.best_metric == pytest.approx(min(losses), rel=1e-5)
    assert losses[-1] > r.best_metric and losses[-2] > r.best_metric
    assert (tmp_path / "out/best/model.safetensors").exists()


def test_bf16_autocast_trains(tmp_path):
    model = lm()
    data = Rows(4)
    r = Trainer(model, data, data, cfg(tmp_path, max_steps=30, batch_size=4, lr=1e-2, precision="bf16")).fit()
    assert r.eval_metrics["eval_loss"] < math.log(64) - 0.5  # well below the uniform guess
    assert model.transformer.wte.weight.dtype == torch.float32  # master weights stay fp32


def test_classification_training_and_saved_folder_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = GPT2Config(**TINY, num_labels=2, pad_token_id=0, id2label={0: "neg", 1: "pos"})
    model = GPT2ForSequenceClassification(config)

    class Cls(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randint(1, 64, (16, 8), generator=g)
            self.y = (self.x[:, -1] > 32).long()  # the label sits on the last token: learnable

        def __len__(self):
            return 16

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.y[i]}

    data = Cls()
    r = Trainer(model, data, data, cfg(tmp_path, max_steps=60, batch_size=8, lr=1e-2, eval_every=60)).fit()
    assert r.eval_metrics["eval_accuracy"] >= 0.9
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(data.x).logits, model(data.x).logits, atol=1e-5, rtol=1e-5)


def test_bad_configs_and_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="lr"):
        TrainingConfig(lr=0)
    with pytest.raises(ValueError, match="schedule"):
        TrainingConfig(schedule="exp")
    with pytest.raises(ValueError, match="empty"):
        Trainer(lm(), Rows(0), config=cfg(tmp_path))
    with pytest.raises(ValueError, match="float32"):
        Trainer(lm().to(torch.bfloat16), Rows(2), config=cfg(tmp_path))
    with pytest.raises(ValueError, match="unknown TrainingConfig fields"):
        TrainingConfig.from_dict({"learning_rate": 1e-3})

    class NoLabels(Rows):
        def __getitem__(self, i):
            return {"input_ids": self.x[i]}

    with pytest.raises(ValueError, match="labels"):
        Trainer(lm(), NoLabels(2), config=cfg(tmp_path, max_steps=1, batch_size=2)).fit()


_DDP_SCRIPT = textwrap.dedent(
    """
    import atexit, os, sys
    from pathlib import Path

    def comm(task):  # a thread that ends while it is listed has no comm left to read
        try:
            return Path(task, "comm").read_text().strip()
        except OSError:
            return ""

    def threads_left():  # runs after gpt2kit's exit handler (atexit runs the last registered first)
        names = [comm(t) for t in Path("/proc/self/task").iterdir()]
        Path(sys.argv[1], "threads-" + os.environ["RANK"]).write_text(" ".join(names))

    if sys.platform == "linux":
        atexit.register(threads_left)
    import torch
    sys.path.insert(0, {tests!r})
    from test_trainer import Rows, lm, cfg
    from gpt2kit.training.trainer import Trainer
    model = lm(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    c = cfg(Path(sys.argv[1]), max_steps=3, batch_size=2, grad_accum=1, lr=1e-2, log_every=1,
            compile=sys.argv[2] == "compile")
    if sys.argv[2] == "orphan":  # the trainer that creates the group is collected; the next one uses it
        Trainer(lm(), Rows(8), config=c)
        import gc
        gc.collect()
    trainer = Trainer(model, Rows(8), config=c)
    trainer.fit()
    if sys.argv[2] == "compile":  # closed by hand here; in eager mode by gpt2kit at exit
        trainer.close()
        try:
            trainer.evaluate(Rows(2))
        except RuntimeError as e:
            Path(sys.argv[1], "after-close-" + os.environ["RANK"]).write_text(str(e))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["eager", "compile", "orphan"])
def test_ddp_two_processes_equal_one_process_with_accumulation(tmp_path, mode):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
    ]
    cmd += ["--master_port", str(_free_port()), str(script), str(tmp_path / "ddp"), mode]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    if sys.platform == "linux":
        # The trainer closed its group at exit: gloo's worker threads were joined while Python was alive
        # (left to the interpreter's shutdown, they aborted the process 1 run in ~10).
        for rank in (0, 1):
            probe = tmp_path / "ddp" / f"threads-{rank}"
            assert probe.exists(), done.stderr[-3000:]  # (the probe's own failure is in the ranks' stderr)
            threads = probe.read_text().split()
            assert not [t for t in threads if "gloo" in t], threads
    if mode == "compile":
        assert "make a new Trainer" in (tmp_path / "ddp" / "after-close-1").read_text()

    single = lm(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    Trainer(
        single, Rows(8), config=cfg(tmp_path / "one", max_steps=3, batch_size=2, grad_accum=2, lr=1e-2)
    ).fit()
    ddp = GPT2LMHeadModel.from_pretrained(tmp_path / "ddp/out")
    assert_same_weights(single, ddp, atol=1e-5)
    # the logged losses (averaged over ranks) equal the single process's
    ddp_log = [json.loads(x) for x in (tmp_path / "ddp/out/metrics.jsonl").read_text().splitlines()]
    one_log = [json.loads(x) for x in (tmp_path / "one/out/metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in ddp_log] == pytest.approx([r["loss"] for r in one_log], rel=1e-4)
