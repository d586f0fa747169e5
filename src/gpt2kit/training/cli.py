"""`gpt2kit train` and `gpt2kit eval`: arguments and entry points. Imports nothing heavy at parse time.

train: data files -> tokenized cache -> LMBlocks / LMRows / ClassificationRows -> Trainer.fit() -> a
save_pretrained folder. eval: sliding-window perplexity of a model on a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

# Sizes for `--config tiny`: the demo model's shape (4 layers x 256 wide would not fit the 30 MB budget in
# fp16 with GPT-2's 50257-token embedding, so it is 224 wide).
TINY = dict(n_layer=4, n_embd=224, n_head=7, n_positions=256)


def model_config_from_spec(spec: str):
    """A GPT2Config from `gpt2` / `gpt2-medium` / ... / `tiny`, a config.json (or folder), `k=v,...`
    overrides, or a name followed by overrides: `tiny,n_layer=6,resid_pdrop=0.0`."""
    from pathlib import Path

    from gpt2kit.config import PRESETS, GPT2Config

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    base: dict[str, Any] = {}
    if parts and "=" not in parts[0]:
        head = parts.pop(0)
        if head == "tiny":
            base = dict(TINY)
        elif head in PRESETS:
            base = dict(PRESETS[head])
        elif Path(head).exists():
            p = Path(head)
            base = GPT2Config.from_json_file(p / "config.json" if p.is_dir() else p).to_dict()
        else:
            raise ValueError(
                f"--config {head!r} is neither a preset ({', '.join(['tiny', *sorted(PRESETS)[:5]])}) "
                "nor an existing config.json; or give key=value pairs like n_layer=4,n_embd=256"
            )
    for part in parts:
        if "=" not in part:
            raise ValueError(f"--config part {part!r} should be key=value (e.g. n_layer=4)")
        key, value = (x.strip() for x in part.split("=", 1))
        base[key] = _parse_value(value)
    return GPT2Config(**base)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# --- train -------------------------------------------------------------------------------------------------


def train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", help="training files: .txt (a document per line), .jsonl, .csv, .tsv")
    src = p.add_argument_group("model")
    src.add_argument("--model", help="a model folder or name to fine-tune")
    src.add_argument(
        "--init", choices=["pretrained", "scratch"], default=None, help="scratch: random weights"
    )
    src.add_argument(
        "--config",
        help="with --init scratch: gpt2 | tiny | config.json | n_layer=4,n_embd=256,... (combinable: tiny,n_layer=6)",
    )
    src.add_argument("--dropout", type=float, help="set resid/embd/attn dropout (default: the config's)")
    src.add_argument("--tokenizer", help="tokenizer folder or name (default: the model's, else gpt2)")
    src.add_argument("--task", choices=["lm", "classify"], default="lm")
    d = p.add_argument_group("data")
    d.add_argument("--field", "--text-column", dest="column", default="text", help="text field / column")
    d.add_argument("--label-column", default="label", help="label field / column (classify)")
    d.add_argument("--eval", dest="eval_files", nargs="+", help="evaluation files (same format)")
    d.add_argument("--eval-split", type=float, default=0.0, help="hold out this fraction of the data instead")
    d.add_argument("--block-size", type=int, help="LM block length (default: min(512, n_positions))")
    d.add_argument(
        "--max-length", type=int, help="classify / --no-pack: longest example (default as block size)"
    )
    d.add_argument(
        "--no-pack", action="store_true", help="LM: one example per row (padded) instead of packing"
    )
    d.add_argument(
        "--clean",
        action="store_true",
        help="normalize whitespace, drop control chars, empty + duplicate rows",
    )
    d.add_argument("--num-proc", type=int, help="tokenizer processes for big inputs")
    t = p.add_argument_group("training")
    t.add_argument("-o", "--output", default="gpt2kit-out", help="output folder (the trained model)")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--warmup", type=float, default=0.0, help="warmup steps (>= 1) or a fraction of all steps")
    t.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="linear")
    t.add_argument("--min-lr-ratio", type=float, default=0.0)
    t.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0: off)")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast (weights stay fp32)")
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step: ~40 s to compile a 124M model, then faster steps",
    )
    t.add_argument("--eval-every", type=int, help="evaluate every N steps (default: each epoch)")
    t.add_argument("--eval-max-batches", type=int)
    t.add_argument(
        "--early-stopping", type=int, metavar="N", help="stop after N evaluations without improvement"
    )
    t.add_argument(
        "--metric", default=None, help="metric for best/early stopping (default: loss; accuracy, f1)"
    )
    t.add_argument("--save-every", type=int, help="checkpoint every N steps (resumable)")
    t.add_argument("--keep-checkpoints", type=int, default=2)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--no-resume", action="store_true", help="start over even if output/checkpoints exists")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")


def train(args: argparse.Namespace) -> int:
    import torch

    from gpt2kit.training import data as tdata
    from gpt2kit.training.config import TrainingConfig
    from gpt2kit.training.trainer import Trainer, _setup_dist

    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = args.init == "scratch" or (args.init is None and args.model is None)
    if scratch and not args.config:
        raise ValueError("give --model DIR to fine-tune, or --init scratch --config gpt2|tiny|n_layer=4,... ")
    if not scratch and not args.model:
        raise ValueError("--init pretrained needs --model DIR")
    if scratch and args.model:
        raise ValueError(
            "--init scratch builds a new model from --config; drop --model (or use --init pretrained)"
        )
    if not 0.0 <= args.eval_split < 1.0:
        raise ValueError(f"--eval-split {args.eval_split} must be in [0, 1), e.g. 0.05")
    if args.eval_files and args.eval_split:
        raise ValueError("give either --eval FILES or --eval-split, not both")

    _check_output_folder(Path(args.output))

    from gpt2kit.config import GPT2Config

    # The model's shape first: a bad --config or --block-size fails before any tokenizing.
    config = model_config_from_spec(args.config) if scratch else GPT2Config.from_pretrained(args.model)
    length = args.block_size or args.max_length or min(512, config.n_positions)
    if length > config.n_positions:
        raise ValueError(
            f"--block-size/--max-length {length} is longer than the model's n_positions {config.n_positions}"
        )
    warmup_steps, warmup_ratio = (int(args.warmup), 0.0) if args.warmup >= 1 else (0, args.warmup)
    cfg = TrainingConfig(
        output_dir=args.output, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=warmup_steps,
        warmup_ratio=warmup_ratio, schedule=args.schedule, min_lr_ratio=args.min_lr_ratio,
        max_grad_norm=args.clip or None, precision="bf16" if args.bf16 else "fp32",
        gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
        eval_every=args.eval_every,
        eval_max_batches=args.eval_max_batches, early_stopping_patience=args.early_stopping,
        metric_for_best=args.metric or "loss", save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, log_every=args.log_every, seed=args.seed,
        resume=not args.no_resume, num_workers=args.num_workers,
        extra={"data": args.data, "eval": args.eval_files, "task": args.task, "block_size": length},
    )  # fmt: skip
    dist = _setup_dist(args.device)  # under torchrun: rank 0 tokenizes first, the others then read its cache
    from gpt2kit import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer or ("gpt2" if scratch else args.model))
    eos = tok.eos_token_id
    classify = args.task == "classify"
    label_column = args.label_column if classify else None

    def load(paths: list[str]) -> list[tdata.TokenizedCorpus]:
        def run() -> list[tdata.TokenizedCorpus]:
            return [
                tdata.tokenize_file(
                    path,
                    tok,
                    column=args.column,
                    label_column=label_column,
                    clean=args.clean,
                    num_proc=args.num_proc,
                    progress=dist.main,
                )  # fmt: skip
                for path in paths
            ]

        if dist.main:
            corpora = run()
            dist.barrier()
        else:
            dist.barrier()
            corpora = run()
        for c in corpora:
            if dist.main and c.clean_report is not None:
                print(f"cleaning {c.manifest.get('path', '')}: {c.clean_report.summary()}", file=sys.stderr)
        return corpora

    train_corpora = load(args.data)
    eval_corpora = load(args.eval_files) if args.eval_files else None

    names = None
    if classify:
        if len(train_corpora) > 1:
            raise ValueError("--task classify takes one training file")
        train_ds = tdata.ClassificationRows(train_corpora[0], args.max_length or length, pad_id=eos)
        names = train_ds.label_names
        eval_ds = (
            tdata.ClassificationRows(
                eval_corpora[0], args.max_length or length, pad_id=eos, label_names=names
            )
            if eval_corpora
            else None
        )
    elif args.no_pack:
        train_ds = tdata.LMRows(train_corpora, length, eos_id=eos, pad_id=eos)
        eval_ds = tdata.LMRows(eval_corpora, length, eos_id=eos, pad_id=eos) if eval_corpora else None
    else:
        train_ds = tdata.LMBlocks(train_corpora, length, eos_id=eos)
        eval_ds = tdata.LMBlocks(eval_corpora, length, eos_id=eos) if eval_corpora else None
    model = _build_model(args, config if scratch else None, names, tok)
    if args.eval_split:
        train_ds, eval_ds = tdata.split_eval(train_ds, args.eval_split, args.seed)

    if dist.main:
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"training {n_params / 1e6:.1f} M parameters on {len(train_ds)} examples"
            + (f", evaluating on {len(eval_ds)}" if eval_ds is not None else "")
            + f"; output: {args.output}",
            file=sys.stderr,
        )
    result = Trainer(model, train_ds, eval_ds, cfg, tokenizer=tok, device=args.device).fit()
    if dist.main:
        summary = {"steps": result.steps, "epochs": round(result.epochs, 3), "train_loss": result.train_loss}
        summary.update(result.eval_metrics)
        if result.stopped_early:
            summary["stopped_early"] = True
        summary["output"] = result.output_dir
        print(json.dumps(summary))
    if dist.owns_group:
        import torch.distributed

        torch.distributed.destroy_process_group()
    return 0


def _check_output_folder(out: Path) -> None:
    """Fail before any training when the output folder cannot be written: a file in its place, a read-only
    or full file system (the OSError names the path; the CLI turns it into one line)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out} is a file, but train writes a folder there; choose a folder path for -o")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):
        pass


def _build_model(args, config, names: list[str] | None, tok):
    """The model to train: a fresh one from `config` (--init scratch), or --model's weights with the
    task's head; a classifier gets the label names (id2label) and pad = eos."""
    import torch

    from gpt2kit import GPT2ForSequenceClassification, GPT2LMHeadModel

    classify = names is not None
    extra: dict[str, Any] = {}
    if args.dropout is not None:
        if not 0.0 <= args.dropout < 1.0:
            raise ValueError(f"--dropout {args.dropout} must be in [0, 1)")
        extra.update(resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout)
    if classify:
        extra.update(
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            pad_token_id=tok.eos_token_id,  # GPT-2 has no pad token: pad with eos, as is customary
        )
    if config is not None:
        for k, v in extra.items():
            setattr(config, k, v)
        if config.vocab_size < len(tok):
            raise ValueError(
                f"the config's vocab_size {config.vocab_size} is smaller than the tokenizer's {len(tok)}"
            )
        torch.manual_seed(args.seed)
        cls = GPT2ForSequenceClassification if classify else GPT2LMHeadModel
        return cls(config)
    if classify:
        return GPT2ForSequenceClassification.from_pretrained(args.model, dtype=torch.float32, **extra)
    from gpt2kit import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, **extra)


# --- eval --------------------------------------------------------------------------------------------------


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        help="a .txt file, scored as its text exactly as written (one tokenization of the whole file); or "
        ".jsonl / .csv / .tsv / .parquet, whose rows (--field) are joined by blank lines as transformers' "
        "perplexity guide joins WikiText's",
    )
    p.add_argument("--model", required=True, help="a model folder or name")
    p.add_argument(
        "--stride", type=int, default=512, help="window step (tokens); smaller is slower and more exact"
    )
    p.add_argument("--max-length", type=int, help="window length (default: the model's n_positions)")
    p.add_argument("--field", "--text-column", dest="column", default="text")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")


def eval_command(args: argparse.Namespace) -> int:
    import torch

    from gpt2kit import AutoModelForCausalLM, AutoTokenizer
    from gpt2kit.training.evaluate import perplexity_of_file

    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=args.dtype).to(args.device)
    r = perplexity_of_file(
        model, tok, args.file, stride=args.stride, max_length=args.max_length, column=args.column,
        progress=sys.stderr.isatty(),
    )  # fmt: skip
    if r.rows is None:
        scored = f"scored {args.file} as one text of {r.text_tokens} tokens"
    else:
        scored = f"scored {r.rows} rows of {args.file} joined by blank lines ({r.text_tokens} tokens)"
    if args.json:
        out = {"tokens": r.tokens, "loss": r.loss, "perplexity": r.perplexity, "windows": r.windows}
        out.update(text_tokens=r.text_tokens, rows=r.rows, scored=scored)
        print(json.dumps(out))
    else:
        print(scored)
        print(f"tokens      {r.tokens}")
        print(f"loss        {r.loss:.4f}")
        print(f"perplexity  {r.perplexity:.3f}")
    return 0
