"""hub.py: the Hugging Face cache layout, GPT-2's renamed repos, and staying offline.

Every test points the cache at a tmp folder, so nothing here reads the real ~/.cache or the network.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from gpt2kit import hub
from gpt2kit.config import GPT2Config

HUB_ENV = (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty HF cache at tmp/hub, offline, with no other hub variable leaking in from the caller."""
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so "gpt2" is never a folder in the working directory
    return tmp_path / "hub"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def fake_hf_hub(monkeypatch, tmp_path):
    """A stand-in huggingface_hub that records imports and downloads instead of doing them."""
    calls: list[tuple] = []
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()

    class Recorder(types.ModuleType):
        def __getattr__(self, name):
            calls.append(("import", name))
            if name != "snapshot_download":
                raise AttributeError(name)

            def snapshot_download(repo_id, **kwargs):
                calls.append(("download", repo_id, kwargs.get("revision")))
                if repo_id.endswith("missing"):
                    raise OSError("404 repo not found")
                return str(downloaded)

            return snapshot_download

    monkeypatch.setitem(sys.modules, "huggingface_hub", Recorder("huggingface_hub"))
    return calls, downloaded


def make_snapshot(
    cache: Path, repo_id: str, revision: str, config: dict | None = None, ref: str | None = "main"
):
    """Lay out models--org--name/{refs/<ref>, snapshots/<revision>/config.json} as huggingface_hub does."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config or {"model_type": "gpt2", "n_layer": 3}))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(revision)  # huggingface_hub writes the hash without a newline
    return snap


# --- where the cache is ------------------------------------------------------------------------------------


def test_cache_dir_follows_the_hub_environment(monkeypatch, tmp_path):
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.hf_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert hub.hf_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub.hf_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", "~/hub-cache")
    assert hub.hf_cache_dir() == tmp_path / "home" / "hub-cache"


def test_hf_home_layout_is_found(monkeypatch, tmp_path):
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    snap = make_snapshot(tmp_path / "hf" / "hub", "openai-community/gpt2", "abc123")
    assert hub.find_in_cache("gpt2") == snap


# --- the cache layout -------------------------------------------------------------------------------------


def test_snapshot_found_through_refs_main(cache):
    make_snapshot(cache, "openai-community/gpt2", "0ld", ref=None)
    snap = make_snapshot(cache, "openai-community/gpt2", "f00d")
    assert hub.find_in_cache("openai-community/gpt2") == snap
    assert hub.find_model_dir("openai-community/gpt2") == snap


@pytest.mark.parametrize(
    "cached_as, asked_as",
    [
        ("openai-community/gpt2", "gpt2"),
        ("gpt2", "openai-community/gpt2"),  # caches filled before the hub renamed the repos
        ("openai-community/gpt2-xl", "gpt2-xl"),
        ("distilbert/distilgpt2", "distilgpt2"),
    ],
)
def test_gpt2_names_and_hub_ids_are_aliases(cache, cached_as, asked_as):
    snap = make_snapshot(cache, cached_as, "cafe")
    assert hub.find_in_cache(asked_as) == snap
    assert hub.find_model_dir(asked_as) == snap


def test_config_from_pretrained_prefers_the_cached_file_over_the_preset(cache):
    make_snapshot(cache, "openai-community/gpt2", "cafe", {"model_type": "gpt2", "n_layer": 3, "n_ctx": 1024})
    cfg = GPT2Config.from_pretrained("gpt2")
    assert cfg.n_layer == 3 and cfg.n_ctx == 1024


def test_revisions(cache):
    main = make_snapshot(cache, "org/model", "aaaa")
    tagged = make_snapshot(cache, "org/model", "bbbb", ref="v1")
    pinned = make_snapshot(cache, "org/model", "cccc", ref=None)
    assert hub.find_in_cache("org/model") == main
    assert hub.find_in_cache("org/model", revision="v1") == tagged
    assert hub.find_in_cache("org/model", revision="cccc") == pinned
    # A revision that is not cached is not found: another snapshot would be the wrong files.
    assert hub.find_in_cache("org/model", revision="v2") is None


def test_without_refs_the_newest_snapshot_is_used(cache):
    old = make_snapshot(cache, "org/model", "1111", ref=None)
    new = make_snapshot(cache, "org/model", "2222", ref=None)
    os.utime(old, (1_000_000, 1_000_000))
    assert hub.find_in_cache("org/model") == new
    # refs/main naming a snapshot that was deleted falls back the same way.
    (cache / "models--org--model" / "refs").mkdir()
    (cache / "models--org--model" / "refs" / "main").write_text("gone")
    assert hub.find_in_cache("org/model") == new


def test_missing_or_empty_repo_is_none(cache):
    assert hub.find_in_cache("gpt2") is None
    (cache / "models--org--empty" / "snapshots").mkdir(parents=True)
    assert hub.find_in_cache("org/empty") is None


def test_folders_win_and_paths_are_never_looked_up_in_the_cache(cache, tmp_path):
    make_snapshot(cache, "openai-community/gpt2", "cafe")
    (tmp_path / "gpt2").mkdir()  # a local folder of that name shadows the cache, as in transformers
    assert hub.find_model_dir("gpt2") == Path("gpt2")
    assert hub.find_model_dir(tmp_path / "gpt2") == tmp_path / "gpt2"
    for name in ("./org/model", "/abs/org/model", "~/model", "a/b/c", "a\\b"):
        assert hub.looks_like_path(name), name
    for name in ("gpt2", "org/model"):
        assert not hub.looks_like_path(name), name
    make_snapshot(cache, "org/model", "beef")
    assert hub.find_model_dir("./org/model", required=False) is None


# --- offline: no network, no huggingface_hub ------------------------------------------------------------


@pytest.mark.parametrize(
    "env, offline",
    [
        ({}, False),
        ({"HF_HUB_OFFLINE": "1"}, True),
        ({"HF_HUB_OFFLINE": "ON"}, True),
        ({"HF_HUB_OFFLINE": "true"}, True),
        ({"HF_HUB_OFFLINE": "0"}, False),
        ({"TRANSFORMERS_OFFLINE": "yes"}, True),
    ],
)
def test_is_offline(monkeypatch, env, offline):
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert hub.is_offline() is offline


def test_offline_never_imports_hf_hub_or_opens_a_socket(cache, no_network, fake_hf_hub):
    calls, _ = fake_hf_hub
    assert hub.download("gpt2") is None
    assert hub.find_model_dir("gpt2", download_ok=True, required=False) is None
    with pytest.raises(FileNotFoundError):
        hub.find_model_dir("org/model", download_ok=True)
    assert GPT2Config.from_pretrained("gpt2").n_layer == 12  # the built-in preset
    assert calls == []


def test_offline_resolution_imports_nothing_from_the_hub(tmp_path):
    # A fresh interpreter: the test process itself has huggingface_hub loaded (transformers imports it).
    code = textwrap.dedent(
        """
        import sys
        from gpt2kit import hub
        from gpt2kit.config import GPT2Config
        GPT2Config.from_pretrained("gpt2-medium")
        assert hub.find_model_dir("org/model", download_ok=True, required=False) is None
        assert hub.download("gpt2") is None
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("huggingface_hub", "requests", "httpx"))
        assert not loaded, loaded
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in HUB_ENV}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_download_only_when_asked_and_online(cache, fake_hf_hub, monkeypatch):
    calls, downloaded = fake_hf_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.find_model_dir("gpt2", required=False) is None  # download_ok defaults to False
    assert hub.find_model_dir("gpt2", download_ok=True, local_files_only=True, required=False) is None
    assert calls == []

    assert hub.find_model_dir("gpt2", download_ok=True, revision="v1") == downloaded
    assert ("download", "openai-community/gpt2", "v1") in calls  # the hub's current name for it

    assert hub.download("org/missing") is None  # hub errors mean "not available", not a crash
    with pytest.raises(FileNotFoundError, match="org/missing"):
        hub.find_model_dir("org/missing", download_ok=True)


def test_download_without_hf_hub_installed(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    assert hub.download("gpt2") is None


# --- messages ---------------------------------------------------------------------------------------------


def test_not_found_message_names_the_path_the_files_and_the_cache(cache, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        hub.find_model_dir("org/nothing", files=("config.json", "model.safetensors"))
    message = str(err.value)
    assert "'org/nothing'" in message
    assert str(tmp_path / "org" / "nothing") in message
    assert "config.json, model.safetensors" in message
    assert str(cache) in message
    assert "save_pretrained" in message


def test_not_found_message_for_a_file(cache, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match=r"weights\.bin is a file; pass the folder that holds config\.json"
    ):
        hub.find_model_dir(tmp_path / "weights.bin")
