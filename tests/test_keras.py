"""gpt2kit.keras: transformers' TF tutorial code (compile / fit / generate / save_pretrained) on Keras 3's
PyTorch backend, held to gpt2kit's torch models and to transformers for what it saves."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# Before keras is imported anywhere in this process; keras.json (written on import) goes to a temporary folder.
os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="gpt2kit-keras-"))
keras = pytest.importorskip("keras", minversion="3.0", reason="the Keras models need the [keras] extra")

from gpt2kit import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel  # noqa: E402
from gpt2kit.keras import TFGPT2ForSequenceClassification, TFGPT2LMHeadModel  # noqa: E402
from hf_oracle import TINY  # noqa: E402

# Keras converts torch tensors with np.array(x), which NumPy 2 warns about on every batch.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny GPT-2 with transformers' own random init, written by transformers."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("keras-tiny")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY)).save_pretrained(folder)
    return folder


def lm_data(n_rows: int = 32, length: int = 17, seed: int = 0) -> np.ndarray:
    """Four random sequences repeated: a model can learn them in a few steps, so the loss must fall."""
    rng = np.random.default_rng(seed)
    return np.tile(rng.integers(0, TINY["vocab_size"], size=(4, length)), (n_rows // 4, 1))


def tutorial_compile(model, lr: float = 1e-2) -> None:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=[loss, *[None] * model.config.n_layer],  # the tutorials' form for the old (logits, past) outputs
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    )


def test_tutorial_fit_generate_save(tiny_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    keras.utils.set_random_seed(0)
    ids = lm_data()
    x, y = ids[:, :-1], ids[:, 1:]
    model = TFGPT2LMHeadModel.from_pretrained(tiny_folder)
    tutorial_compile(model)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        validation_data=(x[:8], y[:8]),
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), save_best_only=True),
            keras.callbacks.ModelCheckpoint(str(tmp_path / "last.weights.h5"), save_weights_only=True),
        ],
        verbose=0,
    ).history
    losses = history["loss"]
    assert losses[-1] < losses[0] - 0.5, losses
    assert np.all(np.diff(history["val_loss"]) < 0), history["val_loss"]  # so the best epoch is the last
    assert "accuracy" in history and "val_accuracy" in history

    out = model.save_pretrained(tmp_path / "out")
    prompt = x[:2, :5]
    tokens = model.generate(prompt, max_new_tokens=8).cpu()  # Keras may have put the model on a GPU
    ours = GPT2LMHeadModel.from_pretrained(out)
    assert torch.equal(tokens, ours.generate(torch.as_tensor(prompt), max_new_tokens=8))

    # transformers reads the folder, with the logits the Keras model computes
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        expected = theirs(torch.as_tensor(x[:2])).logits
    torch.testing.assert_close(model(x[:2]).detach().cpu(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.predict(x[:2], verbose=0), expected.numpy(), atol=1e-4, rtol=1e-4)
    assert torch.equal(tokens, theirs.generate(torch.as_tensor(prompt), max_new_tokens=8, do_sample=False))

    # Keras's own files round-trip the weights (and, for .keras, the compile settings and optimizer)
    reloaded = keras.models.load_model(tmp_path / "best.keras")
    assert isinstance(reloaded, TFGPT2LMHeadModel) and reloaded.optimizer is not None
    fresh = TFGPT2LMHeadModel(model.config)
    fresh.load_weights(tmp_path / "last.weights.h5")
    for other in (reloaded, fresh):
        torch.testing.assert_close(other.predict(x[:2], verbose=0), model.predict(x[:2], verbose=0))


def test_early_stopping_stops_and_restores_the_best_weights(tiny_folder):
    keras.utils.set_random_seed(0)
    ids = lm_data()
    x, y = ids[:, :-1], ids[:, 1:]
    model = TFGPT2LMHeadModel.from_pretrained(tiny_folder)
    tutorial_compile(model)
    # min_delta larger than any loss change: epoch 2 "does not improve", so training stops after it
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=0, min_delta=100.0, restore_best_weights=True
    )
    history = model.fit(
        x, y, batch_size=8, epochs=5, validation_data=(x[:8], y[:8]), callbacks=[stop], verbose=0
    )
    assert len(history.history["loss"]) == 2 and stop.stopped_epoch == 1
    val_loss, _ = model.evaluate(x[:8], y[:8], batch_size=8, verbose=0)
    assert val_loss == pytest.approx(history.history["val_loss"][0], rel=1e-5)  # epoch 1's weights are back


def test_generators_dataloaders_and_transformers_dicts(tiny_folder):
    keras.utils.set_random_seed(0)
    ids = lm_data()
    x, y = ids[:, :-1], ids[:, 1:]

    def batches():
        while True:
            for i in range(0, len(x), 8):
                yield x[i : i + 8], y[i : i + 8]

    model = TFGPT2LMHeadModel.from_pretrained(tiny_folder)
    tutorial_compile(model)
    history = model.fit(
        batches(), steps_per_epoch=4, epochs=2, validation_data=batches(), validation_steps=2, verbose=0
    ).history
    assert history["loss"][1] < history["loss"][0] and "val_loss" in history

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=8, shuffle=True
    )
    history = model.fit(loader, epochs=2, validation_data=loader, verbose=0).history
    assert history["loss"][1] < history["loss"][0] and "val_accuracy" in history

    # transformers' TF convention: compile without loss=, labels in the input dict (unshifted, -100 ignored)
    model = TFGPT2LMHeadModel.from_pretrained(tiny_folder, from_pt=True)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")]
    )
    mask = np.ones_like(ids)
    labels = ids.copy()
    labels[:, :3] = -100
    before = GPT2LMHeadModel.from_pretrained(tiny_folder)(
        torch.as_tensor(ids), labels=torch.as_tensor(labels)
    ).loss
    history = model.fit(
        {"input_ids": ids, "attention_mask": mask, "labels": labels}, batch_size=8, epochs=2, verbose=0
    ).history
    assert history["loss"][1] < history["loss"][0] and "accuracy" in history
    # its first batches' loss is the torch model's loss on the same labels
    assert abs(history["loss"][0] - before.item()) < 0.5
    history = model.fit(ids, ids, batch_size=8, epochs=1, verbose=0).history  # labels as y, same convention
    assert history["loss"][0] < before.item()


def test_sequence_classification_fit_and_save(tiny_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    keras.utils.set_random_seed(0)
    ids = np.random.default_rng(1).integers(1, TINY["vocab_size"], size=(32, 10))
    ids[::3, -2:] = 0  # some right padding, found through pad_token_id
    last = np.where(ids[:, -1] == 0, ids[:, -3], ids[:, -1])
    labels = last % 3  # read at the last real token, which the classifier pools
    model = TFGPT2ForSequenceClassification.from_pretrained(tiny_folder, num_labels=3, pad_token_id=0)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
    )
    assert tuple(model(ids[:4]).shape) == (4, 3)
    history = model.fit(ids, labels, batch_size=8, epochs=3, validation_split=0.25, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] and "val_accuracy" in history

    model.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])  # the model's own loss
    history = model.fit({"input_ids": ids, "labels": labels}, batch_size=8, epochs=2, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]

    out = model.save_pretrained(tmp_path / "clf")
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = theirs(torch.as_tensor(ids[:6])).logits
    torch.testing.assert_close(model(ids[:6]).detach().cpu(), expected, atol=1e-4, rtol=1e-4)
    assert isinstance(model.torch_model, GPT2ForSequenceClassification)


def test_bundled_demo_model_tutorial(tmp_path):
    """The tutorial as written, on gpt2kit-demo (GPT-2's 50257-token vocabulary): text -> blocks -> fit."""
    keras.utils.set_random_seed(0)
    tok = AutoTokenizer.from_pretrained("gpt2kit-demo")
    model = TFGPT2LMHeadModel.from_pretrained("gpt2kit-demo")
    lines = [
        "kettle (noun): a metal pot for boiling water, with a lid, a spout and a handle",
        "whisper (verb): speak softly, without using the vocal cords",
        "lantern (noun): a lamp with a transparent case protecting the flame or bulb",
        "gallop (verb): of a horse, run fast with all four feet off the ground at each stride",
    ]
    ids = np.concatenate([tok(line + "\n", return_tensors="np")["input_ids"][0] for line in lines * 2])
    blocks = ids[: len(ids) // 17 * 17].reshape(-1, 17)
    x, y = blocks[:, :-1], blocks[:, 1:]
    tutorial_compile(model, lr=5e-4)
    history = model.fit(x[:8], y[:8], batch_size=4, epochs=2, validation_data=(x[8:10], y[8:10]), verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    prompt = tok(["guitar (noun):"], return_tensors="np")
    tokens = model.generate(
        prompt["input_ids"], attention_mask=prompt["attention_mask"], max_new_tokens=6
    ).cpu()
    out = model.save_pretrained(tmp_path / "demo-tuned")
    again = GPT2LMHeadModel.from_pretrained(out).generate(
        torch.as_tensor(prompt["input_ids"]), max_new_tokens=6
    )
    assert torch.equal(tokens, again)


def test_mistakes_are_named(tiny_folder, tmp_path):
    ids = lm_data(8)
    model = TFGPT2LMHeadModel.from_pretrained(tiny_folder)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=r"unshifted LM labels.*ids\[:, 1:\]"):
        model.fit({"input_ids": ids, "labels": ids}, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="needs targets"):
        model.fit(ids, epochs=1, verbose=0)
    model.compile(optimizer="adam")  # no loss: the model's own, which needs labels
    with pytest.raises(ValueError, match="labels"):
        model.fit(ids, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="one output"):
        model.compile(optimizer="adam", loss=["mse", "mse"])
    with pytest.raises(ValueError, match="save_pretrained"):
        model.save(tmp_path / "model.h5")
    with pytest.raises(ValueError, match="takes"):
        model({"input_ids": ids, "text": ids})
    with pytest.raises(TypeError, match="from_pretrained"):
        TFGPT2LMHeadModel()


def test_resize_token_embeddings_replaces_the_variables(tiny_folder):
    model = TFGPT2LMHeadModel.from_pretrained(tiny_folder)
    ids = lm_data(8)
    tutorial_compile(model)
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=8, epochs=1, verbose=0)
    n_variables = len(model.trainable_weights)
    model.resize_token_embeddings(TINY["vocab_size"] + 5)
    assert len(model.trainable_weights) == n_variables
    assert (TINY["vocab_size"] + 5, TINY["n_embd"]) in [tuple(v.shape) for v in model.trainable_weights]
    ids[0, 0] = TINY["vocab_size"] + 4  # a new token
    with pytest.raises(ValueError, match="compile"):  # the optimizer only knows the old embedding
        model.fit(ids[:, :-1], ids[:, 1:], batch_size=8, epochs=1, verbose=0)
    tutorial_compile(model)
    model.fit(ids[:, :-1], ids[:, 1:], batch_size=8, epochs=1, verbose=0)
    head = model.torch_model
    assert head.lm_head.weight is head.transformer.wte.weight  # still tied


@pytest.mark.slow
def test_example_script_runs_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "keras_finetune.py"), "--epochs", "1", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "before: 'glimmerfish (noun):" in done.stdout and "after:  'glimmerfish (noun):" in done.stdout
    assert (tmp_path / "out" / "checkpoints" / "best.weights.h5").is_file()
    GPT2LMHeadModel.from_pretrained(tmp_path / "out")


@pytest.mark.slow
def test_example_script_without_out_leaves_no_temp_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "keras_finetune.py"), "--epochs", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(temporary, removed at exit; --out DIR keeps it)" in done.stdout
    left = [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]  # torch's own cache
    assert left == []


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_another_keras_backend_is_refused_by_name():
    # keras itself stays optional: the rest of gpt2kit never imports it
    done = run_python(
        "import sys, gpt2kit.model, gpt2kit.training\n"
        "assert 'keras' not in sys.modules\n"
        "try:\n    import gpt2kit.keras\nexcept ImportError as e:\n    print(e)\n",
        KERAS_BACKEND="jax",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "KERAS_BACKEND='jax'" in done.stdout and "KERAS_BACKEND=torch" in done.stdout
    # keras already imported with another backend (a stand-in module: the others need TensorFlow or JAX)
    done = run_python(
        "import sys, types\n"
        "fake = types.ModuleType('keras')\n"
        "fake.__version__ = '3.5.0'\n"
        "fake.backend = types.SimpleNamespace(backend=lambda: 'tensorflow')\n"
        "sys.modules['keras'] = fake\n"
        "try:\n    import gpt2kit.keras\nexcept ImportError as e:\n    print(e)\n",
        KERAS_BACKEND="tensorflow",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'tensorflow' backend" in done.stdout and "KERAS_BACKEND=torch" in done.stdout
