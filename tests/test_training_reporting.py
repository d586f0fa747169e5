"""report_to: TensorBoard, W&B (offline) and MLflow (a local store) receive the scalars of metrics.jsonl, read
back with each backend's own reader; an interrupted and resumed run logs every point once; a missing
backend is one line naming its extra."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
import torch

from gpt2kit import GPT2Config, GPT2LMHeadModel
from gpt2kit.cli import main
from gpt2kit.training import reporting
from gpt2kit.training.config import TrainingConfig
from gpt2kit.training.trainer import Trainer

TINY = dict(vocab_size=64, n_positions=32, n_layer=1, n_embd=16, n_head=2)


def rows(n: int = 8, T: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, TINY["vocab_size"], (n, T), generator=g)
    return [{"input_ids": r, "labels": r} for r in x]


def run(out: Path, report_to: list[str], callbacks=(), **kw) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**TINY))
    data = rows()
    base = dict(max_steps=6, batch_size=2, lr=1e-2, log_every=1, eval_every=2, save_every=2, progress=False)
    cfg = TrainingConfig(
        **{**base, **kw}, output_dir=str(out), plot=False, report_to=report_to, run_name="tiny"
    )
    Trainer(model, data, data[:4], cfg, callbacks=callbacks).fit()


class Crash(RuntimeError):
    pass


def crash_then_resume(out: Path, report_to: list[str]) -> None:
    """Checkpoints at steps 2 and 4; a crash after step 5 was logged; the resume replays step 5 from 4."""

    def crash_at_5(trainer, event, info):
        if event == "step_end" and info["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        run(out, report_to, callbacks=[crash_at_5])
    run(out, report_to)


def jsonl_points(out: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as {scalar name: {step: value}}, each (name, step) once."""
    points: dict[str, dict[int, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name, value in reporting.scalars(record).items():
            assert record["step"] not in points.setdefault(name, {}), (name, record["step"])
            points[name][record["step"]] = value
    return points


def assert_points_equal(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]], skip=()) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), name  # the same steps: none lost, none twice
        if name in skip:
            continue
        for step, value in want[name].items():
            assert got[name][step] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, step)


def test_report_to_names() -> None:
    assert TrainingConfig().report_to == ["jsonl"]
    assert TrainingConfig(report_to="jsonl, TensorBoard").report_to == ["jsonl", "tensorboard"]
    assert TrainingConfig(report_to="none").report_to == ["none"]
    assert TrainingConfig.from_dict(TrainingConfig(report_to=["wandb"]).to_dict()).report_to == ["wandb"]
    with pytest.raises(ValueError, match="unknown; choose from jsonl, tensorboard, wandb, mlflow"):
        TrainingConfig(report_to=["comet_ml"])
    with pytest.raises(ValueError, match="stand alone"):
        TrainingConfig(report_to=["all", "jsonl"])
    assert reporting.resolve(["none"]) == []
    assert reporting.resolve(["all"])[0] == "jsonl"
    record = {"step": 4, "epoch": 0.5, "eval_loss": 2.0, "eval_tokens": 12, "grad_norm": None}
    assert reporting.scalars(record) == {"eval/loss": 2.0, "eval/tokens": 12.0}


def test_all_means_jsonl_and_every_installed_backend(monkeypatch) -> None:
    monkeypatch.setattr(reporting, "_installed", lambda backend: backend == "mlflow")
    assert reporting.resolve(["all"]) == ["jsonl", "mlflow"]


def test_none_writes_no_metrics_file(tmp_path: Path) -> None:
    run(tmp_path / "out", ["none"], max_steps=2)
    assert (tmp_path / "out/model.safetensors").exists() and not (tmp_path / "out/metrics.jsonl").exists()


def test_a_missing_backend_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(reporting, "_installed", lambda backend: False)
    with pytest.raises(ImportError, match=r"needs the wandb package.*pip install 'gpt2kit\[wandb\]'"):
        run(tmp_path / "out", ["jsonl", "wandb"])
    text = tmp_path / "train.txt"
    text.write_text("hello world\n" * 20)
    rc = main(["train", str(text), "--config", "n_layer=1,n_embd=16,n_head=2,n_positions=32", "-o",
               str(tmp_path / "cli"), "--report-to", "jsonl,tensorboard"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "tensorboard" in err[0] and "pip install 'gpt2kit[tensorboard]'" in err[0]


@pytest.mark.parametrize("report_to", ["tensorboard", "jsonl,tensorboard"])
def test_train_without_tensorboard_leaves_no_output_folder(tmp_path: Path, monkeypatch, capsys, report_to):
    """tensorboard not installed (a None entry in sys.modules: find_spec says it is missing, import fails):
    `gpt2kit train --report-to tensorboard` is one line with the pip fix, and -o is not created."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    text = tmp_path / "train.txt"
    text.write_text("hello world\n" * 20)
    out = tmp_path / "runs" / "out"
    rc = main(["train", str(text), "--config", "n_layer=1,n_embd=16,n_head=2,n_positions=32", "-o",
               str(out), "--report-to", report_to])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "needs the tensorboard package" in err[0] and "pip install 'gpt2kit[tensorboard]'" in err[0]
    assert not out.exists() and not out.parent.exists()


def test_tensorboard_holds_the_jsonl_scalars_once_after_a_resume(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    crash_then_resume(out, ["jsonl", "tensorboard"])
    events = EventAccumulator(str(out / "runs"))
    events.Reload()  # honours the resumed writer's purge_step, as TensorBoard does
    got = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    for tag in got:  # and no step twice
        assert len(events.Scalars(tag)) == len(got[tag]), tag
    want = jsonl_points(out)
    assert sorted(want["train/loss"]) == [1, 2, 3, 4, 5, 6] and sorted(want["eval/loss"]) == [2, 4, 6]
    # Float32 in the event file: equal to the JSONL's numbers up to that rounding. Step 5's tokens/s is the
    # replay's in both: the interrupted run's point was purged.
    assert_points_equal(got, want)


def test_tensorboard_fresh_run_replaces_old_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    run(out, ["tensorboard"], max_steps=2)
    run(out, ["tensorboard"], max_steps=2, resume=False)
    assert len(list((out / "runs").glob("events.out.tfevents.*"))) == 1


def read_wandb_history(path: Path) -> list[tuple[int, dict]]:
    """The history rows of an offline run's .wandb file: W&B's record log (LevelDB's log format: 32 KiB
    blocks of crc / length / type-tagged chunks) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                items = {
                    (i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item
                }
                out.append((record.history.step.num, items))
    return out


def test_wandb_offline_continues_the_run_without_duplicates(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    out = tmp_path / "out"
    crash_then_resume(out, ["jsonl", "wandb"])
    files = sorted((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and files[0].name == files[1].name  # the resume continued the same run id
    assert json.loads((out / "tracking.json").read_text())["wandb"]["run_id"] in files[0].name
    got: dict[str, dict[int, float]] = {}
    for f in files:
        for step, items in read_wandb_history(f):
            for name, value in items.items():
                if not name.startswith("_"):
                    assert step not in got.setdefault(name, {}), (name, step)  # nothing sent twice
                    got[name][step] = value
    # Step 5 was sent before the crash and not again: its tokens/s is the first run's (timings differ).
    assert_points_equal(got, jsonl_points(out), skip=("train/tokens_per_s",))


def test_mlflow_continues_the_run_without_duplicates(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # A file store: mlflow 3 keeps it in maintenance and asks for this opt-in; its sqlite store would cost
    # ~5 s of schema migrations per client here.
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "gpt2kit-test")
    out = tmp_path / "out"
    crash_then_resume(out, ["jsonl", "mlflow"])
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gpt2kit-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resume continued the run
    run_ = runs[0]
    assert run_.info.status == "FINISHED" and run_.info.run_name == "tiny"
    assert run_.data.params["training.lr"] == "0.01" and run_.data.params["model.n_layer"] == "1"
    want = jsonl_points(out)
    got = {}
    for name in want:
        history = client.get_metric_history(run_.info.run_id, name)
        got[name] = {m.step: m.value for m in history}
        assert len(history) == len(got[name]), name  # no step twice
    assert_points_equal(got, want, skip=("train/tokens_per_s",))
