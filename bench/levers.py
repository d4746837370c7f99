"""Measure one training speed lever at a time: LoRA training steps and prediction on real tweets, in one process.

lora_tweets' MiniLM default trains on tweets whose links are replaced by the word http, with batch 32, length-grouped
batches, no gradient checkpointing, `--threads` torch threads (by default one per core), bf16 autocast with the frozen
linear layers stored in bfloat16 and each attention block's input cast to bfloat16 once, no LoRA dropout, and the
dropout masks of the frozen model drawn by `fast_dropout`, with `eager_fast_dropout` attention (eager in training,
SDPA in evaluation). Each training variant changes one of these settings and trains `--rows` fixed training tweets for
one pass: forward, weighted loss, backward and an AdamW step, without the Trainer. The first batch of each pass is a
warm-up and is not timed. The variants run in turn, `--rounds` times, in reverse order in every second round, so that
a slow spell of a shared machine hits all of them, and the table gives the median samples/s of each.

The prediction variants time the forward pass alone on the same number of validation tweets. The padding figures
count the pad tokens of one epoch of the whole training split, which bound what padding-free batches could save.

    python bench/levers.py --rounds 6 --rows 384
    python bench/levers.py --rounds 1 --rows 256 --compile   # adds torch.compile, whose first step compiles
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lora_tweets.data import class_weights, load_tweets
from lora_tweets.models import (PRESETS, cast_frozen_linears, cast_shared_inputs, cpu_supports_bf16, load_model,
                                resolve_model)
from lora_tweets.tokenizers import load_tokenizer, make_collator, padded_tokens_per_epoch, tokenize_dataset

BASE = dict(batch_size=32, order="grouped", checkpointing=False, attention=None, threads=None, bf16=True,
            compile=False, fast_dropout=True, cast=True, shared_cast=True, replace_urls=True, lora_dropout=0.0)
TRAIN_VARIANTS = {
    "default (bf16 autocast, batch 32, grouped)": {},
    "links kept (t.co codes tokenized)": dict(replace_urls=False),
    "LoRA dropout 0.1": dict(lora_dropout=0.1),
    "PyTorch's dropout and SDPA": dict(fast_dropout=False),
    "frozen linear layers in float32": dict(cast=False),
    "each projection casts its input": dict(shared_cast=False),
    "fp32": dict(bf16=False),
    "batch 16": dict(batch_size=16),
    "batch 64": dict(batch_size=64),
    "random batch order": dict(order="random"),
    "gradient checkpointing": dict(checkpointing=True),
    "transformers' eager attention": dict(attention="eager"),
}
PREDICT_VARIANTS = {
    "fp32, no_grad, dataset order": dict(bf16=False, sort=False, inference_mode=False),
    "fp32, inference_mode, length-sorted": dict(bf16=False, sort=True, inference_mode=True),
    "bf16 autocast, inference_mode, length-sorted": dict(bf16=True, sort=True, inference_mode=True),
}
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def batches(rows: list[dict], lengths: np.ndarray, batch_size: int, order: str, collator, seed: int = 0) -> list[dict]:
    "Cut `rows` into padded batches, in random order or grouped by length (batches then shuffled)."
    rng = np.random.default_rng(seed)
    if order in ("grouped", "sorted"): index = np.argsort(lengths, kind="stable")
    elif order == "random": index = rng.permutation(len(rows))
    else: index = np.arange(len(rows))
    groups = [index[i:i + batch_size] for i in range(0, len(index), batch_size)]
    if order == "grouped": groups = [groups[i] for i in rng.permutation(len(groups))]
    return [collator([{k: rows[i][k] for k in (*MODEL_INPUTS, "labels") if k in rows[i]} for i in g]) for g in groups]


def build_model(tokenizer, variant: dict):
    "Load MiniLM with the preset's LoRA as the variant asks: checkpointing, dropout, attention, frozen weights' dtype."
    torch.manual_seed(0)
    lora = dataclasses.replace(PRESETS["minilm"].lora, dropout=variant["lora_dropout"])
    model = load_model("minilm", tokenizer, lora=lora, precision="fp32", device="cpu",
                       gradient_checkpointing=variant["checkpointing"], cpu_fast_dropout=variant["fast_dropout"])
    if variant["attention"]: model.base_model.model.config._attn_implementation = variant["attention"]
    if variant["bf16"] and variant["cast"]: cast_frozen_linears(model)
    if variant["bf16"] and variant["shared_cast"]: cast_shared_inputs(model)
    if variant["compile"]: model = torch.compile(model, dynamic=True)
    return model


def time_training(model, data: list[dict], weights: torch.Tensor, variant: dict) -> dict:
    "Train one pass over `data` and return samples/s and real tokens/s, without the warm-up batch."
    threads = torch.get_num_threads()
    if variant["threads"]: torch.set_num_threads(variant["threads"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant["bf16"] else contextlib.nullcontext()
    if len(data) < 2: raise ValueError(f"only {len(data)} batch to time, and the first is a warm-up. Raise --rows.")
    samples = tokens = 0
    first_step_s = None
    try:
        for step, batch in enumerate(data):
            if step == 1: start = time.perf_counter()
            step_start = time.perf_counter()
            labels = batch["labels"]
            with autocast:
                logits = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=weights)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step == 0: first_step_s = time.perf_counter() - step_start
            else:
                samples += len(labels)
                tokens += int(batch["attention_mask"].sum())
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return {"samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds, "first_step_s": first_step_s}


def time_prediction(model, rows: list[dict], lengths: np.ndarray, collator, variant: dict, batch_size: int = 64) -> float:
    "Return the rows per second of a forward pass over `rows`."
    model.eval()
    data = batches(rows, lengths, batch_size, "sorted" if variant["sort"] else "given", collator)
    grad = torch.inference_mode() if variant["inference_mode"] else torch.no_grad()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant["bf16"] else contextlib.nullcontext()
    start = time.perf_counter()
    with grad, autocast:
        for batch in data:
            model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
    return len(rows) / (time.perf_counter() - start)


def padding_figures(lengths: np.ndarray) -> dict:
    "Return the share of pad tokens in one epoch for the study's batches and for lora_tweets' batches."
    real = int(lengths.sum())
    shapes = {"batch 8, random (study)": (8, "random"), "batch 32, random": (32, "random"),
              "batch 32, sorted by length": (32, "sorted")}
    return {name: 1 - real / padded_tokens_per_epoch(lengths, size, order) for name, (size, order) in shapes.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("LORA_TWEETS_DATA"), help="data source (default: $LORA_TWEETS_DATA)")
    parser.add_argument("--rows", type=int, default=384, help="training and validation tweets per pass (default: 384)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="passes of every variant, in alternating order; an even number balances it (default: 6)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the default variant (default: torch's default, one per core)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (its first step compiles)")
    parser.add_argument("--out", default="bench/results/levers", help="path of the results without suffix (default: %(default)s)")
    args = parser.parse_args(argv)

    import datasets
    datasets.disable_progress_bars()
    dsd = load_tweets(args.data)
    tokenizer = load_tokenizer(resolve_model("minilm")[0], max_length=128)
    tokenized_as = {replace: tokenize_dataset(dsd, tokenizer, replace_urls=replace) for replace in (True, False)}
    tokenized = tokenized_as[True]
    collator = make_collator(tokenizer)
    pick = np.random.default_rng(0).permutation(len(tokenized["train"]))[:args.rows]
    train_rows_as = {replace: [t["train"][int(i)] for i in pick] for replace, t in tokenized_as.items()}
    train_lengths_as = {replace: np.array([r["length"] for r in rows]) for replace, rows in train_rows_as.items()}
    val_rows = [tokenized["val"][i] for i in range(min(args.rows, len(tokenized["val"])))]
    val_lengths = np.array([r["length"] for r in val_rows])
    weights = torch.tensor(class_weights(dsd["train"]["target"]), dtype=torch.float32)

    if args.threads: torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    other_threads = 1 if threads > 1 else 2
    variants = {name: {**BASE, **change} for name, change in TRAIN_VARIANTS.items()}
    variants[f"{other_threads} torch thread{'s' if other_threads > 1 else ''} instead of {threads}"] = {
        **BASE, "threads": other_threads}
    if args.compile: variants["torch.compile (dynamic shapes)"] = {**BASE, "compile": True}
    models = {name: build_model(tokenizer, v) for name, v in variants.items()}
    train_runs = {name: [] for name in variants}
    predict_runs = {name: [] for name in PREDICT_VARIANTS}
    names = list(variants)
    for round_number in range(args.rounds):
        # Odd rounds run the variants in reverse order. On the 2-core Xeon a pass ran at another speed late in a round
        # than early in it. Alternating gives every variant the same mean position over an even number of rounds.
        for name in (names if round_number % 2 == 0 else names[::-1]):
            variant = variants[name]
            replace = variant["replace_urls"]
            data = batches(train_rows_as[replace], train_lengths_as[replace], variant["batch_size"], variant["order"],
                           collator, seed=round_number)
            train_runs[name].append(time_training(models[name], data, weights, variant))
            print(f"round {round_number + 1} {name}: {train_runs[name][-1]['samples_per_s']:.1f} samples/s", flush=True)
        for name, variant in PREDICT_VARIANTS.items():
            predict_runs[name].append(time_prediction(models["frozen linear layers in float32"], val_rows, val_lengths,
                                                      collator, variant))

    base_name = next(iter(variants))
    base = statistics.median(r["samples_per_s"] for r in train_runs[base_name])
    lines = [f"{'training variant':<52} {'samples/s':>9} {'tokens/s':>9} {'vs default':>10}"]
    summary = {"training": {}, "prediction": {}, "padding_share": padding_figures(np.array(tokenized["train"]["length"]))}
    for name, runs in train_runs.items():
        samples = statistics.median(r["samples_per_s"] for r in runs)
        tokens = statistics.median(r["tokens_per_s"] for r in runs)
        summary["training"][name] = {"samples_per_s": samples, "tokens_per_s": tokens, "vs_default": samples / base,
                                     "first_step_s": max(r["first_step_s"] for r in runs)}
        lines.append(f"{name:<52} {samples:>9.1f} {tokens:>9.0f} {samples / base:>10.2f}")
    lines.append(f"{'prediction variant (batch 64)':<52} {'rows/s':>9}")
    for name, runs in predict_runs.items():
        summary["prediction"][name] = statistics.median(runs)
        lines.append(f"{name:<52} {statistics.median(runs):>9.1f}")
    lines.append("pad tokens per epoch of the training split: " +
                 ", ".join(f"{name} {share:.1%}" for name, share in summary["padding_share"].items()))
    text = "\n".join(lines)
    print(text)

    command = "python bench/levers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command.strip(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cpu_supports_bf16": cpu_supports_bf16(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "rows": args.rows, "rounds": args.rounds, "variants": variants, "training_runs": train_runs,
              "prediction_runs": predict_runs, "summary": summary, "table": text}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".txt").write_text(f"$ {command.strip()}\n{text}\n")


if __name__ == "__main__":
    main()
