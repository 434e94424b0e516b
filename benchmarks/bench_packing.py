"""Training throughput with packed documents (state reset at each start) vs plain rows vs a padded batch.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_packing.py [--recipe default] [--steps 6] [--threads 1]

The same training batches of the embedded corpus (the recipe's model, seq_len and batch_size), three ways:

    concat   rows of S tokens, documents flow into each other inside a row (no reset; the classic layout)
    reset    what the trainer runs by default: a batch with a document start inside a row is packed as one
             sequence with cu_seqlens (every document from an empty state); a batch without is the plain rows
    padded   every document piece of those rows in a row of its own, right-padded to S (what a trainer
             without packing has to do to keep documents apart)

A training step is forward, summed cross-entropy, backward, AdamW step. Throughput counts labelled tokens
(padding excluded) per second; the modes alternate step by step and the table reports medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def padded_rows(batch, seq_len: int):
    """Each document piece of each row as its own row, right-padded (labels -100 on the padding)."""
    ids, labels = [], []
    for row in range(batch.input_ids.shape[0]):
        cuts = [0, *torch.nonzero(batch.doc_starts[row, 1:]).flatten().add(1).tolist(), seq_len]
        for a, b in zip(cuts[:-1], cuts[1:]):
            piece_ids = torch.zeros(seq_len, dtype=torch.long)
            piece_labels = torch.full((seq_len,), -100, dtype=torch.long)
            piece_ids[: b - a] = batch.input_ids[row, a:b]
            piece_labels[: b - a] = batch.labels[row, a:b]
            ids.append(piece_ids)
            labels.append(piece_labels)
    return torch.stack(ids), torch.stack(labels)


def main() -> None:
    from xlstm_torch.models.presets import build_model
    from xlstm_torch.training.config import build_model_config, load_recipe
    from xlstm_torch.training.data import PackedBatches, TokenCache, build_tokenizer, iter_documents, split_documents
    from xlstm_torch.training.optim import build_optimizer
    from xlstm_torch.training.trainer import batch_logits

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only-boundaries", action="store_true",
                        help="time only batches with a document start inside a row (the packed path every step)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = load_recipe(preset=args.recipe)
    tokenizer = build_tokenizer(config.tokenizer)
    train_docs, _ = split_documents(list(iter_documents(config.data)), config.val_fraction)
    data = TokenCache.build(train_docs, tokenizer, config.cache_dir)
    batches = PackedBatches(data, config.seq_len, config.batch_size, seed=config.seed)
    torch.manual_seed(0)
    model = build_model(build_model_config(config, tokenizer.vocab_size))
    optimizer = build_optimizer(model, config)
    S = config.seq_len

    def step(mode: str, batch) -> tuple[float, int, int]:
        if mode == "padded":
            ids, labels = padded_rows(batch, S)
        else:
            ids, labels = batch.input_ids, batch.labels
        t0 = time.perf_counter()
        if mode == "reset":  # exactly what the trainer runs
            logits = batch_logits(model, batch, reset_at_documents=True)
        else:
            logits, _ = model(ids, return_state=False)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
                               reduction="sum")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, int((labels != -100).sum()), ids.shape[0]

    modes = ["concat", "reset", "padded"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, list[int]] = {m: [] for m in modes}
    rows: dict[str, list[int]] = {m: [] for m in modes}
    chosen = (batches.batch(j) for j in range(10**6))
    if args.only_boundaries:
        chosen = (b for b in chosen if bool(b.doc_starts[:, 1:].any()))
    for j in range(args.steps + 1):  # step 0 warms up
        batch = next(chosen)
        for mode in modes:
            dt, n, r = step(mode, batch)
            if j:
                times[mode].append(dt)
                tokens[mode].append(n)
                rows[mode].append(r)
    base = statistics.median(t / s for t, s in zip(tokens["concat"], times["concat"]))
    print(f"recipe {args.recipe}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"batch {config.batch_size} x {S}, {args.threads} thread(s), {args.steps} steps per mode\n")
    print("| layout | rows per step | labelled tokens/s | vs concat |")
    print("|---|---|---|---|")
    for mode in modes:
        rate = statistics.median(t / s for t, s in zip(tokens[mode], times[mode]))
        print(f"| {mode} | {statistics.mean(rows[mode]):.1f} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
