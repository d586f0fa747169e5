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


# --lora keys -> LoraConfig fields (peft's names accepted too)
_LORA_KEYS = {
    "r": "r", "alpha": "alpha", "lora_alpha": "alpha", "dropout": "dropout", "lora_dropout": "dropout",
    "targets": "target_modules", "target_modules": "target_modules", "bias": "bias", "rslora": "use_rslora",
}  # fmt: skip
_LORA_EXAMPLE = "e.g. --lora r=8,alpha=16,dropout=0.05,targets=c_attn,c_proj"


def lora_config_from_spec(spec: str):
    """A LoraConfig from `--lora r=8,alpha=16,dropout=0.05,targets=c_attn,c_proj,bias=none,rslora=false`;
    names after targets= continue its list; an empty spec is LoraConfig's defaults (r=8, alpha=16, c_attn)."""
    from gpt2kit.model.lora import LoraConfig

    raw: dict[str, Any] = {}
    key = None
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "=" not in part:
            if key != "target_modules":
                raise ValueError(f"--lora: {part!r} is not key=value; {_LORA_EXAMPLE}")
            raw[key].append(part)  # targets=c_attn,c_proj: the list goes on
            continue
        name, value = (x.strip() for x in part.split("=", 1))
        key = _LORA_KEYS.get(name)
        if key is None:
            raise ValueError(
                f"--lora: unknown key {name!r}; the keys are r, alpha, dropout, targets, bias, rslora "
                f"({_LORA_EXAMPLE})"
            )
        if key in raw:
            raise ValueError(f"--lora: {name} is given twice; give each key once ({_LORA_EXAMPLE})")
        raw[key] = [value] if key == "target_modules" else value
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "target_modules":
            kwargs[key] = value[0] if value == ["all-linear"] else value
            continue
        if key == "bias":
            kwargs[key] = value
            continue
        if key == "use_rslora":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"--lora rslora={value!r} is not true or false; e.g. rslora=true")
            kwargs[key] = value.lower() in ("true", "1", "yes")
            continue
        try:
            number = float(value)
        except ValueError:
            number = None
        if key == "r" and (number is None or not number.is_integer()):
            raise ValueError(f"--lora r={value!r} is not a whole number; the rank is e.g. r=8")
        if number is None:
            raise ValueError(f"--lora {key}={value!r} is not a number; {_LORA_EXAMPLE}")
        kwargs[key] = int(number) if key == "r" or (key == "alpha" and number.is_integer()) else number
    try:
        return LoraConfig(**kwargs)
    except ValueError as e:
        raise ValueError(f"--lora {spec!r}: {e}") from None


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
    src.add_argument(
        "--task",
        choices=["lm", "classify"],
        default="lm",
        help="lm: a language model (next-token prediction); classify: a label per text (--label-column)",
    )
    src.add_argument(
        "--lora",
        nargs="?",
        const="",
        metavar="r=8,alpha=16,...",
        help="train a LoRA adapter of --model instead of all its weights (keys: r, alpha, dropout, "
        "targets=c_attn,c_proj,..., bias, rslora; --lora alone: r=8, alpha=16 on c_attn). The output is an "
        "adapter in peft's format; LoRA usually wants a higher --lr, e.g. 2e-4",
    )
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
    t.add_argument("--epochs", type=float, default=1.0, help="passes over the training data (2.5 works)")
    t.add_argument("--max-steps", type=int, help="stop after N optimizer steps (default: --epochs' steps)")
    t.add_argument("--batch-size", type=int, default=8, help="examples per batch (per process)")
    t.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step")
    t.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (AdamW)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's weight decay")
    t.add_argument("--warmup", type=float, default=0.0, help="warmup steps (>= 1) or a fraction of all steps")
    t.add_argument(
        "--schedule",
        choices=["linear", "cosine", "constant"],
        default="linear",
        help="the learning rate after warmup",
    )
    t.add_argument(
        "--min-lr-ratio", type=float, default=0.0, help="where the schedule ends, as a fraction of --lr"
    )
    t.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0: off)")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast (weights stay fp32)")
    t.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: less memory, slower steps",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step: ~40 s to compile a 124M model, then faster steps",
    )
    t.add_argument("--eval-every", type=int, help="evaluate every N steps (default: each epoch)")
    t.add_argument("--eval-max-batches", type=int, help="evaluate on at most N batches (default: all)")
    t.add_argument(
        "--early-stopping", type=int, metavar="N", help="stop after N evaluations without improvement"
    )
    t.add_argument(
        "--metric", default=None, help="metric for best/early stopping (default: loss; accuracy, f1)"
    )
    t.add_argument("--save-every", type=int, help="checkpoint every N steps (resumable)")
    t.add_argument(
        "--keep-checkpoints", type=int, default=2, help="checkpoints kept in OUTPUT/checkpoints (the newest)"
    )
    t.add_argument(
        "--log-every", type=int, default=10, help="print and log loss, learning rate and speed every N steps"
    )
    t.add_argument(
        "--report-to",
        default="jsonl",
        help="where the numbers go, comma-separated: jsonl (output/metrics.jsonl), tensorboard (output/runs), "
        "wandb, mlflow (each an extra: pip install 'gpt2kit[tensorboard]'), all, none (default: jsonl)",
    )
    t.add_argument("--run-name", help="the W&B / MLflow run's name (default: the output folder's name)")
    t.add_argument(
        "--seed", type=int, default=42, help="seed for new weights (--init scratch), shuffling and dropout"
    )
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
    lora = lora_config_from_spec(args.lora) if args.lora is not None else None
    if lora is not None and scratch:
        raise ValueError("--lora adapts a pretrained model: pass --model DIR (not --init scratch)")
    if lora is not None and args.task != "lm":
        raise ValueError("--lora trains language models (--task lm); fine-tune a classifier without --lora")

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
        resume=not args.no_resume, num_workers=args.num_workers, lora=lora,
        report_to=args.report_to, run_name=args.run_name,
        extra={"data": args.data, "eval": args.eval_files, "task": args.task, "block_size": length},
    )  # fmt: skip
    _check_report_backends(cfg.report_to)
    # Only now, with every argument checked, the output folder: a mistake above leaves no empty folder.
    _check_output_folder(Path(args.output))
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

    trainer = Trainer(model, train_ds, eval_ds, cfg, tokenizer=tok, device=args.device)
    if dist.main:
        n_params = sum(p.numel() for p in model.parameters())
        n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        what = f"{n_params / 1e6:.1f} M parameters"
        if lora is not None:
            what = (
                f"a LoRA adapter of {n_trained / 1e6:.2f} M parameters ({n_trained / n_params:.2%} of {what})"
            )
        print(
            f"training {what} on {len(train_ds)} examples"
            + (f", evaluating on {len(eval_ds)}" if eval_ds is not None else "")
            + f"; output: {args.output}",
            file=sys.stderr,
        )
    if getattr(args, "space", None) is not None:  # gpt2kit tune: train's setup, then a search
        code = _tune(args, trainer)
        dist.close()
        return code
    result = trainer.fit()
    if dist.main:
        summary = {"steps": result.steps, "epochs": round(result.epochs, 3), "train_loss": result.train_loss}
        summary.update(result.eval_metrics)
        if result.stopped_early:
            summary["stopped_early"] = True
        summary["output"] = result.output_dir
        print(json.dumps(summary))
    dist.close()  # (only a group this process created)
    return 0


def _check_report_backends(report_to: list[str]) -> None:
    """A --report-to backend whose package is missing: one line naming the extra, before any tokenizing."""
    from gpt2kit.training.reporting import check_installed, resolve

    try:
        check_installed(resolve(report_to))
    except ImportError as e:
        raise ValueError(str(e)) from None


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
    from gpt2kit import AutoModelForCausalLM
    from gpt2kit.progress import loading

    with loading(args.model):
        cls = GPT2ForSequenceClassification if classify else AutoModelForCausalLM
        return cls.from_pretrained(args.model, dtype=torch.float32, **extra)


# --- tune --------------------------------------------------------------------------------------------------


def tune_args(p: argparse.ArgumentParser) -> None:
    train_args(p)
    s = p.add_argument_group("search (Optuna: pip install 'gpt2kit[tune]')")
    s.add_argument(
        "--space",
        required=True,
        help="what to search, comma-separated: name=LOW:HIGH (int or float range), name=LOW:HIGH:log, "
        "name=A|B|C (a choice), name=VALUE; names are TrainingConfig's (lr, warmup_ratio, schedule, "
        "weight_decay, ...) and the model config's (n_layer, n_embd, n_head, dropout, ...), e.g. "
        '"lr=1e-5:1e-3:log,warmup_ratio=0:0.2,n_layer=2|4" (quoted: | is the shell\'s pipe)',
    )
    s.add_argument("--trials", type=int, default=10, help="how many trainings (default: 10)")
    s.add_argument(
        "--direction",
        choices=["minimize", "maximize"],
        help="default: minimize for --metric loss, maximize for accuracy / f1",
    )
    s.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    s.add_argument(
        "--no-prune", action="store_true", help="run every trial to the end (default: Optuna's MedianPruner)"
    )


def tune(args: argparse.Namespace) -> int:
    """train's setup (data, model, TrainingConfig), then Trainer.hyperparameter_search instead of fit."""
    import importlib.util

    from gpt2kit.training.tune import INSTALL_HINT, parse_space

    if importlib.util.find_spec("optuna") is None:
        raise ValueError(f"gpt2kit tune needs optuna: {INSTALL_HINT}")
    if args.trials < 1:
        raise ValueError(f"--trials {args.trials} must be at least 1")
    args.space = parse_space(args.space)  # a bad --space fails before any tokenizing
    if not (args.eval_files or args.eval_split):
        raise ValueError(
            "gpt2kit tune scores trials on evaluation data: give --eval FILES or --eval-split 0.1"
        )
    return train(args)


def _tune(args: argparse.Namespace, trainer) -> int:
    from gpt2kit.training.tune import format_table

    metric = trainer.config.metric_for_best.removeprefix("eval_")
    direction = args.direction or ("minimize" if metric in ("loss", "perplexity") else "maximize")
    best = trainer.hyperparameter_search(
        args.space,
        n_trials=args.trials,
        direction=direction,
        pruner=None if args.no_prune else "median",
        timeout=args.timeout,
    )
    print(format_table(best.run_summary or []))
    summary = {"best_trial": int(best.run_id), "objective": best.objective}
    summary.update(hyperparameters=best.hyperparameters, output=best.output_dir)
    print(json.dumps(summary))
    return 0


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
        "--stride",
        type=int,
        help="window step (tokens); smaller is slower and more exact (default: the window length, i.e. "
        "the model's n_positions unless --max-length is given)",
    )
    p.add_argument("--max-length", type=int, help="window length (default: the model's n_positions)")
    p.add_argument(
        "--field",
        "--text-column",
        dest="column",
        default="text",
        help="the text's field (.jsonl) or column (.csv, .tsv, .parquet)",
    )
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="the model's dtype while scoring"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")


def eval_command(args: argparse.Namespace) -> int:
    import torch

    from gpt2kit import AutoModelForCausalLM, AutoTokenizer
    from gpt2kit.training.evaluate import perplexity_of_file

    if args.threads:
        torch.set_num_threads(args.threads)
    from gpt2kit.progress import loading

    with loading(args.model):
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=args.dtype).to(args.device)
    context = model.config.n_positions
    if args.max_length is not None and args.max_length > context:
        raise ValueError(
            f"--max-length {args.max_length} is longer than the model's context ({context} positions)"
        )
    stride = args.stride if args.stride is not None else (args.max_length or context)
    if stride > (args.max_length or context):
        raise ValueError(
            f"--stride {stride} is longer than the window ({args.max_length or context} tokens); "
            "pass a smaller --stride"
        )
    r = perplexity_of_file(
        model, tok, args.file, stride=stride, max_length=args.max_length, column=args.column,
        progress=True,  # a bar on a terminal, a line now and then in a log
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
