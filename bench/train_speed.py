"""Compare the training speed of the reference study's recipe with lora_tweets' defaults on the same model and data.

The reference study fine-tuned RoBERTa-large, Mistral-7B and Llama-2-7B with LoRA on these disaster tweets, and its
training recipe is the one of the roberta-large, mistral-7b and llama-2-7b presets in `lora_tweets.models.PRESETS`.

Arm `study` is the study's recipe written with the Hugging Face Trainer: batch 8 in random order, gradient
checkpointing, float32, each tweet tokenized on its own (`map` without batching) with truncation at 512 tokens and
padded per batch by `DataCollatorWithPadding`, LoRA r=2, alpha 16, dropout 0.1 on the family's default targets
(query and value for BERT and RoBERTa), AdamW at lr 1e-4 with a constant schedule, warm-up 0.1 (which a constant
schedule ignores), weight decay 0.001, max grad norm 0.3, class-weighted cross-entropy, evaluation and a checkpoint
every epoch, evaluation batch 8, and the best model (lowest validation loss) loaded at the end. Checkpointing is
non-reentrant: PyTorch's reentrant variant computes no gradients inside a block when none of its inputs requires
one, which is the case behind frozen embeddings.

Arm `lora_tweets` is `lora_tweets.trainer.train(TrainConfig(...))` with the preset's defaults, which include putting
the word http in place of each link before tokenizing (`replace_urls`), so its tweets are about a quarter shorter
in tokens and its tokens/s ratio to the study is lower than its samples/s ratio. Both arms train on
the first `--max-train-samples` rows of the same 80/20 split (seed 42), for the same epochs, with the same seed, and
are scored on the first `--max-eval-samples` rows of the validation split (all by default). `--threads` sets the
torch threads of both arms. On a machine that other jobs share, one thread per process avoids the stalls of a
parallel region whose second thread waits for a core, which otherwise dominate both arms. The arms alternate (study,
lora_tweets, study, ...) so that a slow spell of a shared machine hits both, and each arm runs in a fresh Python
process so that its peak RSS is its own.

Training samples/s and tokens/s divide the rows (and their real, non-pad tokens) of all epochs by the training time
without the per-epoch evaluations: the wall time of `Trainer.train()` less the `eval_runtime` it logs.

After the repeats the script times tokenizing the whole data set (train, validation and test, cold and from the
cache, with links replaced as training does) and predicting the test split with the last lora_tweets run, and writes everything to `--out` as .json
and .txt.

    python bench/train_speed.py --repeats 3 --epochs 2 --max-train-samples 320 --max-eval-samples 320 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("study", "lora_tweets")
STUDY = dict(batch_size=8, learning_rate=1e-4, lr_scheduler="constant", warmup=0.1, weight_decay=0.001,
             max_grad_norm=0.3, max_length=512, lora_r=2, lora_alpha=16, lora_dropout=0.1)


def peak_rss_bytes() -> int:
    "Return the peak resident set size of this process in bytes (ru_maxrss is in KiB on Linux, bytes on macOS)."
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def first_rows(ds, n: int | None):
    "Return the first `n` rows of `ds`, or all of them when `n` is None."
    return ds if n is None or n >= len(ds) else ds.select(range(n))


def load_splits(data: str | None, max_train_samples: int | None, max_eval_samples: int | None):
    "Return the first rows of the train and validation splits."
    from lora_tweets.data import load_tweets
    dsd = load_tweets(data)
    return first_rows(dsd["train"], max_train_samples), first_rows(dsd["val"], max_eval_samples)


def run_study(args, out_dir: str) -> dict:
    "Train with the study's recipe and return its throughput, F1 and wall time."
    import numpy as np
    import torch
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from lora_tweets.data import class_weights
    from lora_tweets.models import resolve_model

    transformers.set_seed(args.seed)
    path, _ = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, val = load_splits(args.data, args.max_train_samples, args.max_eval_samples)

    def encode(row):
        return tokenizer(row["text"], truncation=True, max_length=STUDY["max_length"])

    columns = [c for c in train.column_names if c != "target"]
    train_tok = train.map(encode, remove_columns=columns).rename_column("target", "labels")
    val_tok = val.map(encode, remove_columns=columns).rename_column("target", "labels")
    real_tokens = sum(len(ids) for ids in train_tok["input_ids"])

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=STUDY["lora_r"], lora_alpha=STUDY["lora_alpha"],
                      lora_dropout=STUDY["lora_dropout"])
    model = get_peft_model(model, lora)
    weights = torch.tensor(class_weights(train["target"]), dtype=torch.float32)

    class WeightedLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weights)
            return (loss, outputs) if return_outputs else loss

    def metrics(pred):
        return {"f1": f1_score(pred.label_ids, np.argmax(pred.predictions, -1))}

    training_args = TrainingArguments(
        output_dir=out_dir, num_train_epochs=args.epochs, per_device_train_batch_size=STUDY["batch_size"],
        per_device_eval_batch_size=STUDY["batch_size"], learning_rate=STUDY["learning_rate"],
        lr_scheduler_type=STUDY["lr_scheduler"], warmup_steps=STUDY["warmup"], weight_decay=STUDY["weight_decay"],
        max_grad_norm=STUDY["max_grad_norm"], eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False}, seed=args.seed, report_to="none", use_cpu=True,
        disable_tqdm=True, logging_strategy="no")
    trainer = WeightedLossTrainer(model=model, args=training_args, train_dataset=train_tok, eval_dataset=val_tok,
                                  data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    evaluations = [entry for entry in trainer.state.log_history if "eval_f1" in entry]
    eval_wall = sum(entry["eval_runtime"] for entry in evaluations)
    f1 = min(evaluations, key=lambda entry: entry["eval_loss"])["eval_f1"]  # the model loaded at the end
    compute = wall - eval_wall
    return {"train_rows": len(train), "train_tokens": real_tokens, "train_wall_s": wall, "epoch_eval_wall_s": eval_wall,
            "train_compute_s": compute, "train_samples_per_s": len(train) * args.epochs / compute,
            "train_tokens_per_s": real_tokens * args.epochs / compute, "f1": f1}


def run_lora_tweets(args, out_dir: str) -> dict:
    "Train with lora_tweets' defaults and return its throughput, F1 and wall time."
    from lora_tweets.trainer import TrainConfig, train
    record = train(TrainConfig(model=args.model, data=args.data, output_dir=out_dir, epochs=args.epochs,
                               max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                               seed=args.seed, overwrite_output_dir=True))
    timing = record["timing"]
    return {"train_rows": record["data"]["rows"]["train"], "train_tokens": record["data"]["train_tokens"],
            "train_wall_s": timing["train_wall_s"], "epoch_eval_wall_s": timing["epoch_eval_wall_s"],
            "train_compute_s": timing["train_compute_s"], "train_samples_per_s": timing["train_samples_per_s"],
            "train_tokens_per_s": timing["train_tokens_per_s"], "f1": record["metrics"]["f1"],
            "precision": record["model"]["precision"], "config": record["config"]}


def set_threads(threads: int | None) -> None:
    "Set the number of torch intra-op threads, or keep torch's default (one per core) for None."
    import torch
    if threads: torch.set_num_threads(threads)


def run_arm(args) -> None:
    "Run one arm in this process and write its figures, with the peak RSS, to `args.result_file`."
    set_threads(args.threads)
    out_dir = args.run_dir or tempfile.mkdtemp(prefix=f"train_speed_{args.arm}_")
    result = (run_study if args.arm == "study" else run_lora_tweets)(args, out_dir)
    # the load average shows how busy the shared machine was: above the core count, runs wait for a core
    result.update(arm=args.arm, peak_rss_bytes=peak_rss_bytes(), run_dir=out_dir, load_average_1min=os.getloadavg()[0])
    Path(args.result_file).write_text(json.dumps(result, indent=2, default=str))


def measure_io(args) -> None:
    "Time tokenizing all splits (cold, cached and tweet by tweet) and predicting the test split with `args.run_dir`."
    import datasets

    from lora_tweets.data import load_tweets
    from lora_tweets.models import resolve_model
    from lora_tweets.tokenizers import load_tokenizer, tokenize_dataset
    from lora_tweets.trainer import TrainConfig, predict

    datasets.disable_progress_bars()
    set_threads(args.threads)
    dsd = load_tweets(args.data)
    path, _ = resolve_model(args.model)
    tokenizer = load_tokenizer(path, max_length=128)
    rows = sum(len(ds) for ds in dsd.values())
    replace_urls = TrainConfig().replace_urls  # tokenize as a training run with the defaults does
    figures = {"rows": rows}
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        tokenize_dataset(dsd, tokenizer, cache_dir=cache, replace_urls=replace_urls)
        figures["tokenize_cold_s"] = time.perf_counter() - start
        start = time.perf_counter()
        tokenize_dataset(dsd, tokenizer, cache_dir=cache, replace_urls=replace_urls)
        figures["tokenize_cached_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for ds in dsd.values():
        ds.map(lambda row: tokenizer(row["text"], truncation=True, max_length=128), load_from_cache_file=False)
    figures["tokenize_per_tweet_s"] = time.perf_counter() - start

    # Fill the default cache, as the training run did for its splits.
    tokenize_dataset(dsd, tokenizer, replace_urls=replace_urls)
    start = time.perf_counter()
    predictions = predict(args.run_dir, data=args.data, split="test")
    figures["predict_s"] = time.perf_counter() - start
    figures["predict_rows"] = len(predictions)
    figures["predict_peak_rss_bytes"] = peak_rss_bytes()
    Path(args.result_file).write_text(json.dumps(figures, indent=2))


def child(args, **changes) -> dict:
    "Run this script in a fresh process with `changes` to its arguments and return the JSON it writes."
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = f.name
    command = [sys.executable, __file__, "--model", args.model, "--epochs", str(args.epochs), "--seed", str(args.seed),
               "--result-file", result_file]
    if args.data: command += ["--data", args.data]
    if args.max_train_samples: command += ["--max-train-samples", str(args.max_train_samples)]
    if args.max_eval_samples: command += ["--max-eval-samples", str(args.max_eval_samples)]
    if args.threads: command += ["--threads", str(args.threads)]
    for name, value in changes.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    subprocess.run(command, check=True)
    result = json.loads(Path(result_file).read_text())
    os.unlink(result_file)
    return result


def environment() -> dict:
    "Describe the machine and the library versions."
    import peft
    import torch
    import transformers
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
            "peft": peft.__version__}


def summarise(runs: list[dict], io: dict | None) -> dict:
    "Compute the speed-up of lora_tweets over the study per repeat, and the F1 of both arms."
    study = [r for r in runs if r["arm"] == "study"]
    ours = [r for r in runs if r["arm"] == "lora_tweets"]
    ratios = [b["train_samples_per_s"] / a["train_samples_per_s"] for a, b in zip(study, ours)]
    f1 = {arm: [r["f1"] for r in runs if r["arm"] == arm] for arm in ARMS}
    return {"speedup": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios), "each": ratios},
            "f1_median": {arm: statistics.median(values) for arm, values in f1.items()}, "io": io}


def table(runs: list[dict], summary: dict) -> str:
    "Format the runs and the summary as plain text."
    lines = [f"{'repeat':>6} {'arm':<12} {'samples/s':>10} {'tokens/s':>10} {'train s':>9} {'eval s':>8} "
             f"{'peak RSS MiB':>12} {'val F1':>7}"]
    for r in runs:
        lines.append(f"{r['repeat']:>6} {r['arm']:<12} {r['train_samples_per_s']:>10.1f} {r['train_tokens_per_s']:>10.0f} "
                     f"{r['train_compute_s']:>9.1f} {r['epoch_eval_wall_s']:>8.1f} {r['peak_rss_bytes'] / 2**20:>12.0f} "
                     f"{r['f1']:>7.4f}")
    s = summary["speedup"]
    lines.append(f"speed-up in training samples/s (lora_tweets / study): min {s['min']:.2f}, median {s['median']:.2f}, "
                 f"max {s['max']:.2f}")
    f1 = summary["f1_median"]
    lines.append(f"validation F1, median over repeats: study {f1['study']:.4f}, lora_tweets {f1['lora_tweets']:.4f}")
    io = summary["io"]
    if io:
        lines.append(f"tokenize {io['rows']} rows: cold {io['tokenize_cold_s']:.2f} s, cached {io['tokenize_cached_s']:.3f} s, "
                     f"tweet by tweet {io['tokenize_per_tweet_s']:.2f} s")
        lines.append(f"predict {io['predict_rows']} test rows with a trained run (loading included): {io['predict_s']:.2f} s, "
                     f"peak RSS {io['predict_peak_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="preset name or model folder (default: minilm)")
    parser.add_argument("--data", default=os.environ.get("LORA_TWEETS_DATA"),
                        help="data source (default: $LORA_TWEETS_DATA, else lora_tweets' default source)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of both arms (default: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternated (default: 2)")
    parser.add_argument("--max-train-samples", type=int, default=None,
                        help="train on the first N rows of the training split (default: all)")
    parser.add_argument("--max-eval-samples", type=int, default=None,
                        help="evaluate both arms on the first N rows of the validation split (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of both arms (default: torch's default, one per core)")
    parser.add_argument("--seed", type=int, default=42, help="training seed of both arms (default: 42)")
    parser.add_argument("--out", default="bench/results/train_speed",
                        help="path of the results without suffix; .json and .txt are written (default: %(default)s)")
    parser.add_argument("--skip-io", action="store_true", help="skip the tokenize and predict timings")
    parser.add_argument("--arm", choices=[*ARMS, "io"], help=argparse.SUPPRESS)  # set for the child processes
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.arm == "io": return measure_io(args)
    if args.arm: return run_arm(args)

    runs = []
    last_run_dir = None
    with tempfile.TemporaryDirectory(prefix="train_speed_") as work:
        for repeat in range(1, args.repeats + 1):
            for arm in ARMS:
                run_dir = str(Path(work) / f"{arm}-{repeat}")
                result = child(args, arm=arm, run_dir=run_dir)
                result["repeat"] = repeat
                runs.append(result)
                print(f"repeat {repeat} {arm}: {result['train_samples_per_s']:.1f} samples/s, F1 {result['f1']:.4f}",
                      flush=True)
                if arm == "lora_tweets": last_run_dir = run_dir
            write_results(args, argv, runs, None)  # keeps the finished repeats if a later one is interrupted
        io = None if args.skip_io else child(args, arm="io", run_dir=last_run_dir)
    print(write_results(args, argv, runs, io))


def write_results(args, argv, runs: list[dict], io: dict | None) -> str:
    "Write the runs, the summary and the table to `args.out` as .json and .txt, and return the table."
    summary = summarise(runs, io)
    text = table(runs, summary)
    command = "python bench/train_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command.strip(), "arguments": {k: v for k, v in vars(args).items()
                                                         if k not in ("arm", "result_file", "run_dir")},
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": environment(),
              "study_recipe": STUDY, "runs": runs, "summary": summary, "table": text}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".txt").write_text(f"$ {command.strip()}\n{text}\n")
    return text


if __name__ == "__main__":
    main()
