"""ONNX export in the layout of the Hub's `onnx/` folders, which Optimum and transformers.js load.

    decoder_model.onnx             input_ids (B, T), attention_mask (B, T), position_ids (B, T)
                                   -> logits (B, T, V), present.{i}.key / present.{i}.value (B, nh, T, hs)
    decoder_with_past_model.onnx   + past_key_values.{i}.key / .value (B, nh, P, hs); attention_mask (B, P + T);
                                   presents (B, nh, P + T, hs). A past of length 0 makes it a prefill too.
    decoder_model_merged.onnx      both graphs behind an If on the input use_cache_branch (bool, shape [1]):
                                   False runs decoder_model and ignores the pasts (any length, 0 or 1 as the
                                   loaders feed them), True runs decoder_with_past_model; weights stored once
    model.onnx                     decoder_with_past_model again, under the one name transformers.js (v3 and
                                   later) loads for a decoder-only model; it feeds a past of length 0 first
    *_quantized.onnx               the same, with onnxruntime.quantization.quantize_dynamic (int8 weights,
                                   activations quantized per call)
    config.json, generation_config.json, tokenizer files (vocab.json, merges.txt, tokenizer.json, ...)

These are the names, inputs and outputs of Optimum's GPT-2 export (the `gpt2` repository's onnx/ folder) and
of transformers.js's files (model.onnx and model_quantized.onnx, its dtypes "fp32" and "q8"). Exported into
MODEL_DIR/onnx (the default), MODEL_DIR is a model folder transformers.js loads (tests/test_export_engines.py
runs it there); the config and tokenizer files inside onnx/ let Optimum's ORTModelForCausalLM.from_pretrained
load the folder by itself.

Why a graph of its own rather than a trace of `model.forward`: the forward chooses its mask and its kernels
in Python from tensor values (no mask for an unpadded prompt, `is_causal`, oneDNN or split-K products picked
by measurement), and a tracer would freeze whichever branch the example input took. `_Decoder` is the same
computation in plain tensor operations with every length symbolic; the tests hold it to the model's logits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gpt2kit.export.common import load_lm, load_tokenizer, require

if TYPE_CHECKING:
    from gpt2kit.model import GPT2LMHeadModel

logger = logging.getLogger(__name__)

DECODER = "decoder_model.onnx"
DECODER_WITH_PAST = "decoder_with_past_model.onnx"
DECODER_MERGED = "decoder_model_merged.onnx"
# transformers.js v3+ opens onnx/model{suffix}.onnx for a decoder-only model and nothing else (checked with
# @huggingface/transformers 4.3): the decoder with past, which it feeds empty pasts for the prompt.
TRANSFORMERS_JS = "model.onnx"
QUANTIZED_SUFFIX = "_quantized"
OPSET = 17  # LayerNormalization is one operator from 17 on; ONNX Runtime and onnxruntime-web run it
QUANTIZE_CHOICES = (None, "int8")
# A protobuf cannot exceed 2 GiB, so larger models keep their weights beside the graph in one file,
# `<name>.onnx_data`, as Optimum and transformers.js name it. Below that, one self-contained file.
EXTERNAL_DATA_ABOVE = 1_800_000_000


def _require_onnx():
    return require("onnx", "onnx", "ONNX export")


def past_names(n_layer: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


# --- the graph ---------------------------------------------------------------------------------------------


class _Decoder(nn.Module):
    """GPT-2's LM forward in plain tensor operations, for the tracer: (ids, mask, positions, *pasts) ->
    (logits, *presents). Reads the model's own modules and parameters, so nothing is copied."""

    def __init__(self, model: GPT2LMHeadModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        trunk = self.model.transformer
        cfg = self.model.config
        nh, hs = cfg.n_head, cfg.head_dim
        B, T = input_ids.shape[0], input_ids.shape[1]
        S = attention_mask.shape[1]  # pasts + new: the key length
        x = trunk.wte(input_ids) + trunk.wpe(position_ids)  # (B, T, C)

        # Query t sits in key slot S - T + t: it may see the slots up to its own that the mask keeps.
        # Built from the shapes at run time, so one graph serves every prompt and past length.
        query_slot = torch.arange(T) + (S - T)
        causal = torch.arange(S)[None, :] <= query_slot[:, None]  # (T, S)
        blocked = ~(causal[None, None] & attention_mask.bool()[:, None, None, :])  # (B, 1, T, S)
        lowest = torch.finfo(x.dtype).min

        presents = []
        for i, block in enumerate(trunk.h):
            attn = block.attn
            q, k, v = (block.ln_1(x) @ attn.c_attn.weight + attn.c_attn.bias).split(cfg.n_embd, dim=2)
            q, k, v = (t.reshape(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            if past:
                k = torch.cat([past[2 * i], k], dim=2)  # (B, nh, S, hs)
                v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            # GPT-2's eager attention with dtype-min for blocked keys: a query whose keys are all blocked (a
            # left-padding position) gets an even softmax instead of NaN, as in transformers.
            scores = (q @ k.transpose(-1, -2)) * attn.scale  # (B, nh, T, S)
            probs = torch.softmax(scores.masked_fill(blocked, lowest), dim=-1)
            y = (probs @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
            x = x + (y @ attn.c_proj.weight + attn.c_proj.bias)
            mlp = block.mlp
            h = mlp.act(block.ln_2(x) @ mlp.c_fc.weight + mlp.c_fc.bias)
            x = x + (h @ mlp.c_proj.weight + mlp.c_proj.bias)
        # The tied head is the embedding matrix; the exporter folds its transpose into one (C, V) weight.
        logits = trunk.ln_f(x) @ self.model.lm_head.weight.t()  # (B, T, V)
        return (logits, *presents)


def export_decoder(
    model: GPT2LMHeadModel, path: str | os.PathLike, *, with_past: bool, opset: int = OPSET
) -> Path:
    """Write one decoder graph: decoder_model (with_past=False) or decoder_with_past_model (True).

    >>> export_decoder(model, "out/decoder_with_past_model.onnx", with_past=True)  # doctest: +SKIP
    """
    onnx = _require_onnx()
    model = load_lm(model, "ONNX export")
    path = Path(path)
    cfg = model.config
    n_layer, nh, hs = cfg.n_layer, cfg.n_head, cfg.head_dim
    # Example lengths only: every axis below is symbolic. The past is non-empty so that the tracer cannot
    # specialise the concatenation away.
    batch, length, past_len = 2, 3, (4 if with_past else 0)
    generator = torch.Generator().manual_seed(0)
    args: tuple[Any, ...] = (
        torch.randint(0, cfg.vocab_size, (batch, length), generator=generator),
        torch.ones(batch, past_len + length, dtype=torch.long),
        torch.arange(past_len, past_len + length).repeat(batch, 1),
    )
    pasts, presents = past_names(n_layer), present_names(n_layer)
    total = "past_sequence_length + sequence_length" if with_past else "sequence_length"
    axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: total},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
        **{name: {0: "batch_size", 2: total} for name in presents},
    }
    inputs = ["input_ids", "attention_mask", "position_ids"]
    if with_past:
        args += tuple(torch.randn(batch, nh, past_len, hs, generator=generator) for _ in pasts)
        axes.update({name: {0: "batch_size", 2: "past_sequence_length"} for name in pasts})
        inputs += pasts
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("exporting %s (%d layers)", path.name, n_layer)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        traced = Path(tmp) / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes read in Python, which are intended
            torch.onnx.export(
                _Decoder(model).eval(),
                args,
                str(traced),
                input_names=inputs,
                output_names=["logits", *presents],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic axes by name
            )
        # Loaded and saved again so that a large model's weights land in one `<name>_data` file, however the
        # exporter split them.
        graph = onnx.load(str(traced))
        graph.producer_name = "gpt2kit"
        save_model(graph, path)
    return path


# --- files -------------------------------------------------------------------------------------------------


def save_model(model, path: str | os.PathLike, external_data_above: int | None = None) -> Path:
    """Save an onnx.ModelProto to path atomically; its weights go beside it in `<name>_data` when they exceed
    external_data_above bytes (default EXTERNAL_DATA_ABOVE). Saving that way empties the model's tensors."""
    onnx = _require_onnx()
    path = Path(path)
    external_data_above = EXTERNAL_DATA_ABOVE if external_data_above is None else external_data_above
    size = sum(_initializer_bytes(t) for t in _all_initializers(model.graph))
    tmp = path.with_name(f".{path.name}.tmp")
    data = path.with_name(path.name + "_data")
    if size > external_data_above:
        tmp_data = data.with_name(f".{data.name}.tmp")
        tmp_data.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(
            model,
            str(tmp),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=tmp_data.name,
            size_threshold=1024,
        )
        # The graph names its data file, so the data keeps the name the graph was saved with until both are
        # renamed together: rewrite the location, then move.
        graph = onnx.load(str(tmp), load_external_data=False)
        for tensor in _all_initializers(graph.graph):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data.name
        os.replace(tmp_data, data)
        onnx.save_model(graph, str(tmp))
    else:
        data.unlink(missing_ok=True)
        onnx.save_model(model, str(tmp))
    os.replace(tmp, path)
    return path


def _all_initializers(graph):
    """Initializers of a graph and of every subgraph (If branches), depth first."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node or attr.g.initializer:
                yield from _all_initializers(attr.g)


def _initializer_bytes(tensor) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    count = 1
    for d in tensor.dims:
        count *= d
    return count * 4


# --- merging -----------------------------------------------------------------------------------------------


def merge_decoders(
    decoder: str | os.PathLike, decoder_with_past: str | os.PathLike, path: str | os.PathLike
) -> Path:
    """decoder_model + decoder_with_past_model -> decoder_model_merged: one If on `use_cache_branch`.

    Weights are stored once, in the outer graph, where both branches read them (equal tensors are found by
    content, so this also shares the weights of two quantized files). Everything else of each graph moves
    into its branch under a prefix, because a branch may not reuse a name of the outer graph or of its
    sibling; scalars and small integer shapes stay in the branches, as Optimum's merge keeps them.
    """
    onnx = _require_onnx()
    from onnx import helper

    no_past = onnx.load(str(decoder))
    with_past = onnx.load(str(decoder_with_past))
    outer_inputs = [i for i in with_past.graph.input]
    input_names = {i.name for i in outer_inputs}
    missing = [i.name for i in no_past.graph.input if i.name not in input_names]
    outputs_differ = [o.name for o in no_past.graph.output] != [o.name for o in with_past.graph.output]
    if missing or outputs_differ:
        raise ValueError(
            f"{decoder} and {decoder_with_past} are not the two halves of one decoder (inputs only in the "
            f"first: {missing}; outputs equal: {not outputs_differ}); export both with export_onnx"
        )

    shared: dict[tuple, Any] = {}  # (dtype, dims, digest) -> the outer initializer
    taken = set(input_names) | {"use_cache_branch"}
    branches = []
    for tag, model in (("no_past", no_past), ("with_past", with_past)):
        graph = model.graph
        rename: dict[str, str] = {}
        local = []
        for init in graph.initializer:
            if len(init.dims) == 0 or (len(init.dims) == 1 and init.data_type in (6, 7)):  # int32 / int64
                local.append(init)
                continue
            original = init.name
            key = (init.data_type, tuple(init.dims), _digest(init))
            if key not in shared:
                init.name = original if original not in taken else f"{original}.{len(shared)}"
                taken.add(init.name)
                shared[key] = init
            rename[original] = shared[key].name
        # Names produced or held inside the branch get the prefix; outer inputs and shared weights keep theirs.
        for init in local:
            rename[init.name] = f"{tag}/{init.name}"
            init.name = rename[init.name]
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name:
                    rename.setdefault(name, f"{tag}/{name}")
                    node.output[i] = rename[name]
        for node in graph.node:
            node.name = f"{tag}/{node.name}" if node.name else ""
            for i, name in enumerate(node.input):
                if name and name not in input_names:
                    node.input[i] = rename.get(name, name)
        branch_outputs = []
        for out in graph.output:
            renamed = onnx.ValueInfoProto()
            renamed.CopyFrom(out)
            renamed.name = rename.get(out.name, out.name)
            branch_outputs.append(renamed)
        branches.append(
            helper.make_graph(list(graph.node), tag, inputs=[], outputs=branch_outputs, initializer=local)
        )

    for inp in outer_inputs:
        if inp.name == "attention_mask":
            # The mask is as long as the prompt in the no-past branch and as past + new in the other.
            inp.type.tensor_type.shape.dim[1].dim_param = "attention_mask_sequence_length"
    use_cache = helper.make_tensor_value_info("use_cache_branch", onnx.TensorProto.BOOL, [1])
    if_node = helper.make_node(
        "If",
        inputs=["use_cache_branch"],
        outputs=[o.name for o in with_past.graph.output],
        name="use_cache_branch_if",
        then_branch=branches[1],
        else_branch=branches[0],
    )
    merged_graph = helper.make_graph(
        [if_node],
        "merged",
        inputs=[*outer_inputs, use_cache],
        outputs=list(with_past.graph.output),
        initializer=list(shared.values()),
    )
    merged = helper.make_model(
        merged_graph, opset_imports=list(with_past.opset_import), producer_name="gpt2kit"
    )
    merged.ir_version = with_past.ir_version  # make_model's newest IR version may be newer than runtimes read
    if sum(_initializer_bytes(t) for t in _all_initializers(merged_graph)) < EXTERNAL_DATA_ABOVE:
        onnx.checker.check_model(merged)  # a protobuf over 2 GiB can only be checked from its files
    return save_model(merged, path)


def _digest(init) -> bytes:
    from onnx import numpy_helper

    data = init.raw_data or numpy_helper.to_array(init).tobytes()
    return hashlib.sha256(data).digest()


# --- quantization ------------------------------------------------------------------------------------------


def quantize_onnx_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime's dynamic quantization: int8 weights (one scale per tensor), activations quantized per call.

    The settings ORT's own transformers tooling uses (quantize_helper.py): every MatMul, the LM head included,
    and the embedding Gathers; per_channel off. Merged decoders are quantized as their two halves, then merged.
    """
    onnx = _require_onnx()
    quantization = require("onnxruntime.quantization", "onnx", "int8 quantization of an ONNX export")
    src, dst = Path(src), Path(dst)
    external = (src.with_name(src.name + "_data")).is_file()
    logger.info("quantizing %s -> %s (dynamic int8)", src.name, dst.name)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp, _quiet_preprocessing_hint():
        out = Path(tmp) / dst.name
        quantization.quantize_dynamic(
            src,
            out,
            weight_type=quantization.QuantType.QInt8,
            per_channel=False,
            use_external_data_format=external,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        save_model(onnx.load(str(out)), dst)
    return dst


class _quiet_preprocessing_hint(logging.Filter):
    """Drop ORT's root-logger advice to pre-process first (shape inference for static-shape models), which
    does not apply to these dynamic-shape decoders, while quantizing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")

    def __enter__(self):
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self)


# --- the folder --------------------------------------------------------------------------------------------


def default_out(model_dir: Path) -> Path:
    """MODEL_DIR/onnx, the Hub's layout; but a model bundled with the package (gpt2kit-demo) lives inside the
    installed package, not a place to write hundreds of MB: its export goes to NAME-onnx in the current
    folder instead."""
    from gpt2kit import hub

    if any(model_dir.resolve() == bundled.resolve() for bundled in hub.BUNDLED_MODELS.values()):
        return Path(f"{model_dir.name}-onnx")
    return model_dir / "onnx"


def export_onnx(
    model: str | os.PathLike | GPT2LMHeadModel,
    out: str | os.PathLike | None = None,
    *,
    quantize: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    opset: int = OPSET,
) -> list[Path]:
    """Export a model folder to ONNX as the Hub lays it out; return the files written.

    out defaults to MODEL_DIR/onnx (a bundled model's: NAME-onnx in the current folder, see default_out).
    Besides Optimum's three decoders, model.onnx (transformers.js's name for the decoder with past).
    quantize="int8" adds decoder_model_quantized.onnx, decoder_with_past_model_quantized.onnx,
    decoder_model_merged_quantized.onnx and model_quantized.onnx.
    tokenizer: a folder or "gpt2" when the model folder has no tokenizer files of its own.

    >>> export_onnx("checkpoints/gpt2", quantize="int8")  # doctest: +SKIP
    [PosixPath('checkpoints/gpt2/onnx/decoder_model.onnx'), ...]
    """
    _require_onnx()
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize:
        require("onnxruntime", "onnx", "int8 quantization of an ONNX export")
    model_dir = None
    if isinstance(model, (str, os.PathLike)):
        from gpt2kit import hub

        model_dir = hub.find_model_dir(model, files=("config.json", "model.safetensors"))
    if out is None:
        if model_dir is None:
            raise ValueError(
                "out= is needed when the model is passed as an object (there is no folder to write in)"
            )
        out = default_out(model_dir)
    out = Path(out)
    if out.is_file():
        raise ValueError(f"out must be a folder, but {out} is a file")
    lm = load_lm(model_dir if model_dir is not None else model, "ONNX export")
    tok = load_tokenizer(
        tokenizer, model, model_dir, lm.config.vocab_size, required=False, what="ONNX export"
    )
    out.mkdir(parents=True, exist_ok=True)

    written = [
        export_decoder(lm, out / DECODER, with_past=False, opset=opset),
        export_decoder(lm, out / DECODER_WITH_PAST, with_past=True, opset=opset),
    ]
    written.append(merge_decoders(written[0], written[1], out / DECODER_MERGED))
    written.append(copy_graph(written[1], out / TRANSFORMERS_JS))
    plain = [DECODER, DECODER_WITH_PAST, DECODER_MERGED, TRANSFORMERS_JS]
    if quantize is None:
        # Quantized files of an earlier export would hold other weights beside these: remove them, as
        # save_pretrained removes stale weight files.
        for name in map(quantized_name, plain):
            for path in (out / name, out / f"{name}_data"):
                if path.is_file():
                    logger.info("removing %s from an earlier export", path)
                    path.unlink()
    if quantize == "int8":
        quantized = [quantize_onnx_int8(p, out / quantized_name(p.name)) for p in written[:2]]
        written += [*quantized, merge_decoders(*quantized, out / quantized_name(DECODER_MERGED))]
        written.append(copy_graph(quantized[1], out / quantized_name(TRANSFORMERS_JS)))
    written += [data for p in written if (data := p.with_name(p.name + "_data")).is_file()]
    written += write_model_files(lm, tok, out)
    logger.info("wrote %s", ", ".join(p.name for p in written))
    return written


def copy_graph(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """The graph at src saved again as dst, its weights (if kept beside it) in dst's own `<name>_data`, the
    name the loaders derive from the graph's file name. A graph that holds its weights is the same bytes
    under another name: a hard link where the file system allows one (no second copy of the weights on
    disk, 500 MB for gpt2 in float32), else a copy."""
    src, dst = Path(src), Path(dst)
    if not Path(f"{src}_data").exists():
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(src, dst)
        return dst
    onnx = _require_onnx()
    return save_model(onnx.load(str(src)), dst)


def quantized_name(name: str) -> str:
    """decoder_model.onnx -> decoder_model_quantized.onnx: the name Optimum and transformers.js look for."""
    return f"{Path(name).stem}{QUANTIZED_SUFFIX}.onnx"


def write_model_files(model: GPT2LMHeadModel, tok, out: Path) -> list[Path]:
    """config.json, generation_config.json and the tokenizer's files: what the loaders read beside the graphs."""
    import copy

    config = copy.deepcopy(model.config)
    config.architectures = [
        "GPT2LMHeadModel"
    ]  # the graphs are the LM, whatever head the folder was saved with
    config.use_cache = True
    written = [Path(config.save_pretrained(out))]
    written.append(Path(model.generation_config.save_pretrained(out)))
    if tok is not None:
        written += [Path(p) for p in tok.tokenizer.save_pretrained(out)]
    return written
