"""Measure LoRA training throughput, MFU and peak memory of the 7B presets on one GPU, with random weights.

For each preset (mistral-7b, llama-2-7b) and each mode (bf16 weights, and the same weights in 4-bit NF4), the
script builds the real architecture from the preset's stored config with random weights, so nothing is downloaded.
It wraps the model with the preset's LoRA for sequence classification, trains a fixed number of steps on batches
whose token lengths follow the tweets' length distribution, and prints one JSON line per configuration.

    python bench/gpu_check.py                       # on a CUDA GPU: both presets, bf16 and 4-bit
    python bench/gpu_check.py --device cpu --tiny   # smoke test of the same code on a CPU, in seconds

FLOPs. A training step of a model with N parameters in its matrix products on T tokens costs 2·N·T in the forward
pass. The backward pass of full fine-tuning costs 4·N·T: 2·N·T for the gradients of the activations and 2·N·T for
the gradients of the weights, hence the usual 6·N·T. With LoRA the base weights are frozen, so their weight
gradients are never computed, but the activation gradients still flow through every layer down to the first LoRA
matrix. The script therefore counts 4·N·T model FLOPs per step. N counts the weights of the linear layers and the
head, not the embeddings (a lookup, not a product) and not the LoRA matrices (r·(in + out) per target, under 0.2 %
of N for the presets). Attention scores add about 4·s·d FLOPs per token and layer, under 0.5 % for tweets of
s < 100 tokens, and are left out. Gradient checkpointing recomputes the forward pass (another 2·N·T); MFU leaves
that out, as model FLOP utilisation does by definition, so it measures useful work. `mfu` counts the real tweet
tokens, `mfu_padded` the tokens the GPU computed including padding.

Batches. The token count of each row is drawn from bench/tweet_token_lengths.json (the tweets under Mistral-7B's
tokenizer), or from `--data` and `--tokenizer` when given. As the Trainer does with group_by_length, each group of
50 batches is sorted by length before it is cut into batches, so each batch is padded to its longest row.

NOTE: only the CPU smoke mode has run so far (with and without bitsandbytes). The CUDA path, its time budget of under
five minutes on one H100-class GPU and the peak table are untested on a GPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

try:
    import lora_tweets  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from accelerate import init_empty_weights
from peft import prepare_model_for_kbit_training
from transformers import AutoConfig, AutoModelForSequenceClassification

from lora_tweets.models import (FAMILIES, PRESETS, _keep_trainable_fp32, count_config_parameters, count_parameters,
                                enable_gradient_checkpointing, lora_config, preset_config, wrap_lora)

# PEFT 0.21 reads a property that transformers 5 deprecates. The warning comes from PEFT, not from this script.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

_logger = logging.getLogger("gpu_check")

LENGTHS_FILE = Path(__file__).resolve().parent / "tweet_token_lengths.json"

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, from NVIDIA's data sheets. A key matches as a substring
# of torch.cuda.get_device_name(). The first match wins, so the specific names come before the general ones.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.5),
    ("H200", 989.4),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
)

MODES = ("bf16", "4bit")


def peak_tflops(device_name: str) -> float | None:
    "Return the dense bf16 peak of a GPU by its name, or None for a name the table does not list."
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def read_lengths(path: Path) -> np.ndarray:
    "Read a token-length histogram file and return one length per tweet."
    counts = json.loads(path.read_text())["counts"]
    return np.repeat(np.array([int(k) for k in counts]), np.array(list(counts.values())))


def tokenize_lengths(data: str, tokenizer: str) -> np.ndarray:
    "Tokenize the training tweets of a data source with a local tokenizer folder and return their token counts."
    from lora_tweets.data import load_tweets
    from lora_tweets.tokenizers import load_tokenizer

    tok = load_tokenizer(tokenizer)
    texts = load_tweets(data)["train"]["text"][:]
    return np.array([len(ids) for ids in tok(texts, truncation=True)["input_ids"]])


def write_lengths(lengths: np.ndarray, path: Path, tokenizer: str, data: str) -> None:
    "Write a token-length histogram file in the format `read_lengths` reads."
    values, counts = np.unique(lengths, return_counts=True)
    record = {"description": "Token count of each tweet, special tokens included.", "tokenizer": tokenizer,
              "data": data, "rows": int(len(lengths)), "counts": {str(v): int(c) for v, c in zip(values, counts)}}
    path.write_text(json.dumps(record, indent=1) + "\n")


def length_batches(lengths: np.ndarray, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    "Draw `steps` batches of row lengths, sorted within groups of 50 batches as group_by_length does."
    rng = np.random.default_rng(seed)
    batches = []
    while len(batches) < steps:
        group = np.sort(rng.choice(lengths, size=50 * batch_size))[::-1]
        batches.extend(group[i:i + batch_size] for i in range(0, len(group), batch_size))
    # a group runs from its longest batch to its shortest, so a short run taken in order would time the long ones only
    order = rng.permutation(len(batches))
    return [batches[i] for i in order[:steps]]


def make_batch(row_lengths: np.ndarray, config, device: str, generator: torch.Generator) -> dict:
    "Build a right-padded batch of random token ids with the given row lengths and random labels."
    width = int(row_lengths.max())
    input_ids = torch.full((len(row_lengths), width), config.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, n in enumerate(row_lengths):
        # ids from 3 up avoid the special tokens, so no row contains the pad (= eos) id
        input_ids[i, :n] = torch.randint(3, config.vocab_size, (int(n),), generator=generator)
        attention_mask[i, :n] = 1
    labels = torch.randint(0, 2, (len(row_lengths),), generator=generator)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "labels": labels.to(device)}


def tiny_config(name: str):
    "Shrink a preset's architecture to 2 layers of width 64, keeping its family and its key/value head ratio."
    config = preset_config(name)
    kv_ratio = config.num_attention_heads // getattr(config, "num_key_value_heads", config.num_attention_heads)
    values = dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=1000, max_position_embeddings=512)
    if hasattr(config, "num_key_value_heads"):
        values["num_key_value_heads"] = max(1, 4 // kv_ratio)
    for key, value in values.items():
        setattr(config, key, value)
    if hasattr(config, "head_dim"):
        config.head_dim = config.hidden_size // config.num_attention_heads
    return config


def matmul_parameters(model: torch.nn.Module) -> int:
    "Count the weights of the linear layers (in × out, also for 4-bit layers), before LoRA is added."
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def quantize_4bit(model: torch.nn.Module, head: str, compute_dtype: torch.dtype, device: str) -> None:
    "Replace every linear layer outside the head by a bitsandbytes NF4 layer with double quantization, in place."
    import bitsandbytes as bnb

    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and not name.startswith(head)]
    for name in names:  # names, not modules: a kept reference would keep the bf16 weight allocated
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child_name)
        quantized = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                      compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                      device="meta")
        quantized.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4")
        if module.bias is not None:
            quantized.bias = torch.nn.Parameter(module.bias.data, requires_grad=False)
        setattr(parent, child_name, quantized.to(device))  # bitsandbytes quantizes when the weight moves to a device
        del module, quantized
    gc.collect()


def build_model(config, mode: str, device: str, gradient_checkpointing: bool):
    "Build the random-weight classifier of a config in the mode's precision, wrapped with the preset's LoRA."
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    family = FAMILIES[config.model_type]
    with torch.device(device):  # the weights are initialised where they live: seconds for 7B on a GPU
        base = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    base.to(device)
    n_matmul = matmul_parameters(base)
    if mode == "4bit":
        quantize_4bit(base, family.head, dtype, device)
        # as load_model does: freeze the base and keep the unquantized weights (embeddings, norms, head) in float32
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if gradient_checkpointing:
        enable_gradient_checkpointing(base)
    return base, n_matmul, dtype


def run_one(name: str, mode: str, args, lengths: np.ndarray) -> dict:
    "Train one configuration for the requested steps and return its measurements."
    device = args.device
    config = tiny_config(name) if args.tiny else preset_config(name)
    preset = PRESETS[name]
    record = {"preset": name, "mode": mode, "tiny": args.tiny, "device": device, "batch_size": args.batch_size,
              "steps": args.steps, "warmup_steps": args.warmup_steps, "lora_r": preset.lora.r,
              "lora_target_modules": list(preset.lora.target_modules), "gradient_checkpointing": args.gradient_checkpointing}
    if device == "cuda":
        record["gpu"] = torch.cuda.get_device_name()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    start = time.perf_counter()
    base, n_matmul, dtype = build_model(config, mode, device, args.gradient_checkpointing)
    model = wrap_lora(base, lora_config(preset.lora, FAMILIES[config.model_type]))
    _keep_trainable_fp32(model)
    if device == "cuda":
        torch.cuda.synchronize()
        record["weights_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
    record["build_s"] = round(time.perf_counter() - start, 2)
    # counted on the meta device, because a 4-bit layer stores two weights per byte and numel() counts the bytes
    record.update(parameters=count_config_parameters(config, preset.lora).total,
                  trainable=count_parameters(model).trainable, matmul_parameters=n_matmul,
                  weights_dtype="nf4" if mode == "4bit" else str(dtype).removeprefix("torch."))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.001)
    generator = torch.Generator().manual_seed(args.seed)
    batches = length_batches(lengths, args.batch_size, args.warmup_steps + args.steps, args.seed)
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = padded_tokens = 0
    losses = []
    for step, row_lengths in enumerate(batches):
        if step == args.warmup_steps:
            if device == "cuda": torch.cuda.synchronize()
            timed_start = time.perf_counter()
        batch = make_batch(row_lengths, config, device, generator)
        # the Trainer's bf16 mode: autocast over bf16 weights, trainable weights in float32
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup_steps:
            tokens += int(row_lengths.sum())
            padded_tokens += int(row_lengths.max()) * len(row_lengths)
            losses.append(float(loss.detach()))
    if device == "cuda": torch.cuda.synchronize()
    seconds = time.perf_counter() - timed_start

    flops_per_token = 4 * n_matmul
    peak = args.peak_tflops if args.peak_tflops is not None else (
        peak_tflops(record["gpu"]) if device == "cuda" else None)
    record.update(seconds=round(seconds, 6), step_ms=round(1000 * seconds / args.steps, 1), tokens=tokens,
                  padded_tokens=padded_tokens, tokens_per_s=round(tokens / seconds, 1),
                  padded_tokens_per_s=round(padded_tokens / seconds, 1), flops_formula="4*N*T",
                  flops_per_token=flops_per_token, model_flops_per_s=flops_per_token * tokens / seconds,
                  peak_tflops=peak, mfu=None, mfu_padded=None, final_loss=round(losses[-1], 4))
    if peak:
        record["mfu"] = round(record["model_flops_per_s"] / (peak * 1e12), 4)
        record["mfu_padded"] = round(flops_per_token * padded_tokens / seconds / (peak * 1e12), 4)
    if device == "cuda":
        record["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    del model, base, optimizer
    gc.collect()
    return record


def skip_reason(mode: str) -> str | None:
    "Return why a mode cannot run here, or None when it can."
    if mode != "4bit":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ModuleNotFoundError:
        return "bitsandbytes is not installed: pip install bitsandbytes"
    return None


def build_parser() -> argparse.ArgumentParser:
    "Build the command-line parser."
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["mistral-7b", "llama-2-7b"], choices=["mistral-7b", "llama-2-7b"],
                   help="presets to measure (default: both)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="bf16 keeps the weights in bf16, 4bit stores them in NF4 and computes in bf16 as QLoRA does (default: both)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="device to train on (default: cuda)")
    p.add_argument("--tiny", action="store_true", help="shrink each architecture to 2 layers of width 64 (smoke test)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per configuration (default: 20)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before them (default: 3)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per batch, as in the presets (default: 8)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute activations in the backward pass, as the presets do (default: on)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device in TFLOP/s, for MFU (default: from the table of GPU names)")
    p.add_argument("--lengths", type=Path, default=LENGTHS_FILE,
                   help="token-length histogram of the tweets (default: bench/tweet_token_lengths.json)")
    p.add_argument("--data", help="with --tokenizer: tokenize the training tweets of this data source instead")
    p.add_argument("--tokenizer", help="with --data: local tokenizer folder, such as a downloaded checkpoint")
    p.add_argument("--write-lengths", type=Path, metavar="FILE",
                   help="with --data and --tokenizer: write their histogram to FILE and exit")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, lengths, tokens and labels (default: 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    "Run every requested configuration and print one JSON line each."
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (args.data is None) != (args.tokenizer is None):
        print("gpu_check: error: --data and --tokenizer must be given together.", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU found. Run with --device cpu --tiny for a smoke test.", file=sys.stderr)
        return 2
    for option, value, minimum in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                                   ("--warmup-steps", args.warmup_steps, 0)):
        if value < minimum:
            print(f"gpu_check: error: {option} {value} is invalid. Use {minimum} or more.", file=sys.stderr)
            return 2
    if args.data is not None:
        lengths = tokenize_lengths(args.data, args.tokenizer)
        if args.write_lengths:
            write_lengths(lengths, args.write_lengths, args.tokenizer, args.data)
            return 0
    else:
        lengths = read_lengths(args.lengths)
    if args.device == "cuda" and args.peak_tflops is None and peak_tflops(torch.cuda.get_device_name()) is None:
        _logger.warning("no bf16 peak known for %s, so MFU is left empty. Pass --peak-tflops to set it.",
                        torch.cuda.get_device_name())

    torch.manual_seed(args.seed)
    for name in args.presets:
        for mode in args.modes:
            reason = skip_reason(mode)
            if reason:
                print(json.dumps({"preset": name, "mode": mode, "status": "skipped", "reason": reason}), flush=True)
                continue
            record = run_one(name, mode, args, lengths)
            print(json.dumps({"status": "ok", **record}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
