"""The training loop: one trainer for a laptop CPU and for torchrun with DDP or FSDP2.

    trainer = Trainer(load_recipe(preset="default"), out_dir="runs/default")
    result = trainer.fit()

One optimizer step, top to bottom:

    lr = warm-up + cosine (a function of the step)                     optim.lr_at
    seed the RNG from (seed, step, rank)                               no RNG state to save
    for each micro-batch (grad_accum):                                 data.PackedBatches.batch(step, micro)
        logits = model(input_ids (B, S)) [packed: (1, B*S) with cu_seqlens, state reset per document]
        loss = summed cross-entropy / tokens of the whole global batch   -> exact mean at any world size
        backward
    global grad norm, clipped; NaN/Inf loss or norm -> stop (or skip) BEFORE the optimizer step
    AdamW step; every eval_every: validation loss and bits per byte; every save_every: checkpoint

Everything that decides the numbers (weights, AdamW moments, step counter; data order and RNG are functions of
the step) is in the checkpoint, so a run killed at any moment and resumed continues bit-identically on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from xlstm_torch.checkpoint import CONFIG_NAME, _alias_names, load_pretrained
from xlstm_torch.models.presets import build_model

from . import distributed as D
from .checkpointing import (CheckpointError, atomic_write_text, latest_checkpoint, load_checkpoint, publish_weights,
                            save_checkpoint)
from .config import RecipeError, TrainConfig, build_model_config
from .optim import build_optimizer, lr_at
from .reporting import PLOT_NAME, MetricsLog, ProgressBar, plot_losses

__all__ = ["Trainer", "TrainResult", "TrainingError", "RunFolderError", "TRAIN_CONFIG_NAME", "batch_logits"]

TRAIN_CONFIG_NAME = "train_config.json"
SAMPLE_NAME = "sample.txt"
# Keys a resumed run may change; every other key must equal the original run's (or the numbers would differ).
RESUMABLE_CHANGES = {"max_steps", "eval_every", "eval_batches", "log_every", "save_every", "keep_last",
                     "tensorboard", "sample_prompt", "sample_tokens", "sample_temperature", "threads", "nonfinite",
                     "distributed", "cache_dir", "device", "compile"}


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss or gradient with nonfinite='stop')."""


class RunFolderError(ValueError):
    """The output folder cannot be used for this run (it holds another run, or nothing to resume)."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None
    tokens_per_s: float | None
    sample: str | None
    skipped_steps: int


def _step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Trainer:
    """Builds data, model and optimizer from a ``TrainConfig``; ``fit()`` trains, evaluates, saves and samples.

    ``resume=True`` continues the run in ``out_dir`` from its latest checkpoint (the recipe saved there is the
    base; only the keys in ``RESUMABLE_CHANGES`` may differ). Without it, ``out_dir`` must be new or empty.
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, resume: bool = False, stream=None) -> None:
        self.out_dir = Path(out_dir)
        self.config = config = self._check_run_folder(config, resume)
        self.dist = D.init_distributed(config.device)
        self.device = self.dist.device
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        elif self.dist.enabled and self.device.type == "cpu":  # processes on one machine share its cores
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        self.stream = stream
        self._autocast_dtype = self._precision()

        from .data import PackedBatches, TokenCache, build_tokenizer, iter_documents, split_documents

        self.tokenizer = build_tokenizer(config.tokenizer)
        docs = list(iter_documents(config.data, text_field=config.text_field))
        train_docs, val_docs = split_documents(docs, config.val_fraction)
        # Rank 0 tokenises (or finds the cache); the others wait and then read the cache.
        if not self.dist.is_main:
            D.barrier(self.dist)
        self.train_data = TokenCache.build(train_docs, self.tokenizer, config.cache_dir)
        self.val_data = TokenCache.build(val_docs, self.tokenizer, config.cache_dir)
        if self.dist.is_main:
            D.barrier(self.dist)
        if config.batch_size % self.dist.world_size:
            raise RecipeError(f"batch_size={config.batch_size} (rows per micro-step over all processes) must be "
                              f"divisible by the number of processes ({self.dist.world_size})")
        rows = config.batch_size // self.dist.world_size  # this process's share of every micro-batch
        self.train_batches = PackedBatches(self.train_data, config.seq_len, rows, seed=config.seed,
                                           rank=self.dist.rank, world_size=self.dist.world_size,
                                           grad_accum=config.grad_accum)
        self.val_batches = PackedBatches(self.val_data, config.seq_len, rows, shuffle=False, split="validation",
                                         rank=self.dist.rank, world_size=self.dist.world_size)

        torch.manual_seed(config.seed)  # the initial weights: the same on every rank and every resume
        self.model_config = build_model_config(config, self.tokenizer.vocab_size)
        self.model = build_model(self.model_config).to(self.device)
        self.model_config_dict = {"model_type": self.model.model_type, **self.model_config.to_dict()}
        self.aliases = _alias_names(self.model.state_dict(keep_vars=True))  # tied weights, stored once
        self._packed = config.packing == "reset"
        if self._packed and "cu_seqlens" not in inspect.signature(self.model.forward).parameters:
            raise RecipeError(f"packing='reset' needs a model that takes cu_seqlens; "
                              f"{type(self.model).__name__} does not (use packing=concat)")
        self.wrapped = D.wrap_model(self.model, self.dist, config.distributed)
        self.optimizer = build_optimizer(self.model, config)
        self.forward_model = torch.compile(self.wrapped) if config.compile else self.wrapped

        self.start_step, self.tokens_seen, self.skipped = 0, 0, 0
        if resume:
            self._resume()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / TRAIN_CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
            atomic_write_text(self.out_dir / CONFIG_NAME, json.dumps(self.model_config_dict, indent=2, sort_keys=True)
                              + "\n")
            tokenizer_file = getattr(self.tokenizer, "path", None)
            if tokenizer_file is not None:  # `xlstm generate OUT` then decodes with the same tokenizer
                from xlstm_torch.tokenizers import TOKENIZER_NAME

                atomic_write_text(self.out_dir / TOKENIZER_NAME, Path(tokenizer_file).read_text(encoding="utf-8"))

    # --- set-up ---------------------------------------------------------------------------------------------------
    def _check_run_folder(self, config: TrainConfig, resume: bool) -> TrainConfig:
        out = self.out_dir
        saved_file = out / TRAIN_CONFIG_NAME
        if out.exists() and not out.is_dir():
            raise RunFolderError(f"--out {str(out)!r} exists and is not a folder")
        if not resume:
            if saved_file.is_file():
                raise RunFolderError(f"--out {str(out)!r} holds a training run already; pass --resume to continue "
                                     "it, or choose another --out (nothing was changed)")
            if out.is_dir() and any(out.iterdir()):
                raise RunFolderError(f"--out {str(out)!r} is a non-empty folder that is not a training run; "
                                     "choose an empty or new folder (nothing was changed)")
            return config
        if not saved_file.is_file():
            raise RunFolderError(f"--resume: {str(out)!r} holds no training run ({TRAIN_CONFIG_NAME} missing)")
        saved = TrainConfig.from_dict(json.loads(saved_file.read_text()), source=str(saved_file))
        changed = {k for k, v in config.to_dict().items() if v != getattr(saved, k)}
        not_allowed = sorted(changed - RESUMABLE_CHANGES)
        if not_allowed:
            diffs = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in not_allowed)
            raise RunFolderError(f"--resume: the recipe differs from the run in {str(out)!r} in keys that change "
                                 f"the numbers ({diffs}); only {sorted(RESUMABLE_CHANGES)} may change")
        return config

    def _precision(self) -> torch.dtype | None:
        choice = self.config.precision
        if choice == "auto":
            choice = "bf16" if self.device.type == "cuda" else "fp32"
        return torch.bfloat16 if choice == "bf16" else None

    def _resume(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:  # killed before its first checkpoint: start again from step 0
            return
        model_config, weights, optim_state, state = load_checkpoint(ckpt)
        if model_config != self.model_config_dict:
            raise CheckpointError(f"checkpoint {str(ckpt)!r} is of another model: its config differs from the "
                                  f"recipe's ({_dict_diff(model_config, self.model_config_dict)})")
        for key, value in self._data_fingerprint().items():
            if state.get("data", {}).get(key) != value:
                raise CheckpointError(f"checkpoint {str(ckpt)!r} was trained on other data or tokenizer "
                                      f"({key}: {state.get('data', {}).get(key)!r} now {value!r})")
        for alias, name in self.aliases.items():
            weights[alias] = weights[name]
        set_state_dict(self.model, self.optimizer, model_state_dict=weights, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        if self.dist.is_main:
            publish_weights(self.out_dir, ckpt)
        self.start_step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.skipped = state.get("skipped_steps", 0)

    def _data_fingerprint(self) -> dict:
        return {"tokenizer": getattr(self.tokenizer, "fingerprint", type(self.tokenizer).__name__),
                "train_tokens": len(self.train_data), "val_tokens": len(self.val_data),
                "train_documents": len(self.train_data.doc_offsets) - 1}

    # --- one step -------------------------------------------------------------------------------------------------
    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def _loss_sum(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed cross-entropy over the batch's labelled tokens, and their count."""
        labels = batch.labels.to(self.device, non_blocking=True)
        with self._autocast():
            # Packed batches run eagerly: a compiled graph is specialised to the document boundaries, so each
            # new packing would compile anew (tests/ops/test_compile.py).
            logits = batch_logits(model, batch, self._packed, self.device, packed_model=self.wrapped)  # (B, S, V)
        logits = logits.reshape(labels.numel(), -1).float()
        loss_sum = F.cross_entropy(logits, labels.reshape(-1), ignore_index=-100, reduction="sum")
        return loss_sum, (labels != -100).sum()

    def train_step(self, step: int) -> dict:
        c = self.config
        lr = lr_at(step, lr=c.lr, warmup_steps=c.warmup_steps, max_steps=c.max_steps, min_lr_ratio=c.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_step_seed(c.seed, step, self.dist.rank))
        self.wrapped.train()
        batches = [self.train_batches.batch(step, micro) for micro in range(c.grad_accum)]
        count = torch.tensor(float(sum(int((b.labels != -100).sum()) for b in batches)), device=self.device)
        global_count = D.all_reduce_sum(count, self.dist).item()
        # DDP/FSDP average gradients over ranks, so world_size / global_count makes the result sum / global_count.
        scale = self.dist.world_size / max(global_count, 1.0)
        loss_total = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch in batches:
            loss_sum, _ = self._loss_sum(self.forward_model, batch)
            (loss_sum * scale).backward()
            loss_total += loss_sum.detach().double()
        loss = (D.all_reduce_sum(loss_total, self.dist) / max(global_count, 1.0)).item()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip if c.grad_clip > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        grad_norm = float(norm)
        skipped = 0
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            if c.nonfinite == "stop":
                raise TrainingError(f"step {step}: loss {loss} / gradient norm {grad_norm} is not finite; stopped "
                                    "before the optimizer step (the last checkpoint is intact). Lower lr, or set "
                                    "nonfinite=skip to skip such steps")
            skipped = 1
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        tokens = int(global_count)
        return {"lr": lr, "loss": loss, "grad_norm": grad_norm, "tokens": tokens, "skipped": skipped}

    # --- evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss (nats / token), bits per byte and perplexity over ``eval_batches`` batches (0: all).

        ``PackedBatches.eval_batches`` gives every rank the same number of batches (an unlabelled filler row where
        the last one runs out), so every rank runs the same forward passes, as FSDP's weight gathering needs.
        """
        self.wrapped.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in self.val_batches.eval_batches(self.config.eval_batches or None):
            loss_sum, n_tokens = self._loss_sum(self.forward_model, batch)
            total += loss_sum.double()
            count += n_tokens.double()
        total, count = D.all_reduce_sum(total, self.dist).item(), D.all_reduce_sum(count, self.dist).item()
        loss = total / max(count, 1.0)
        bytes_per_token = self.val_data.num_bytes / max(len(self.val_data), 1)
        return {"val_loss": loss, "val_bpb": loss / math.log(2) / bytes_per_token,
                "val_ppl": math.exp(min(loss, 700.0))}

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def save(self, step: int) -> None:
        """A resumable checkpoint after ``step`` optimizer steps (a collective: every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer,
                                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.dist.is_main:
            state = {"tokens_seen": self.tokens_seen, "skipped_steps": self.skipped, "data": self._data_fingerprint(),
                     "world_size": self.dist.world_size}
            save_checkpoint(self.out_dir, step, model_config=self.model_config_dict, model_state=model_state,
                            aliases=self.aliases, optim_state=optim_state, trainer_state=state,
                            keep_last=self.config.keep_last)
        D.barrier(self.dist)

    # --- the run --------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        c, main = self.config, self.dist.is_main
        metrics = MetricsLog(self.out_dir, resume_step=self.start_step, tensorboard=c.tensorboard) if main else None
        bar = ProgressBar(c.max_steps, self.start_step, c.log_every, self.stream) if main else None
        last: dict = {}
        evaluation: dict = {}
        t_start = time.perf_counter()
        window_tokens, window_time = 0, 0.0
        try:
            for step in range(self.start_step, c.max_steps):
                t0 = time.perf_counter()
                out = self.train_step(step)
                dt = time.perf_counter() - t0
                self.tokens_seen += out["tokens"]
                self.skipped += out["skipped"]
                window_tokens, window_time = window_tokens + out["tokens"], window_time + dt
                tokens_per_s = window_tokens / window_time
                done = step + 1
                if done % c.log_every == 0:
                    window_tokens, window_time = 0, 0.0
                row = {"step": done, "tokens": self.tokens_seen, "lr": out["lr"], "loss": out["loss"],
                       "grad_norm": out["grad_norm"], "tokens_per_s": round(tokens_per_s, 1),
                       "elapsed_s": round(time.perf_counter() - t_start, 2), "skipped": out["skipped"]}
                is_last = done == c.max_steps
                if done % c.eval_every == 0 or is_last:
                    evaluation = self.evaluate()
                    row.update(evaluation)
                if main:
                    metrics.write(row)
                    bar.update(step, f"loss {out['loss']:.3f} | lr {out['lr']:.2e} | {tokens_per_s:,.0f} tok/s")
                    if "val_loss" in row:
                        bar.message(f"step {done}: validation loss {row['val_loss']:.4f} | "
                                    f"{row['val_bpb']:.3f} bits/byte | perplexity {row['val_ppl']:.2f}")
                last = row
                if done % c.save_every == 0 or is_last:
                    self.save(done)
                    if main:
                        plot_losses(self.out_dir / "metrics.csv", self.out_dir / PLOT_NAME,
                                    title=f"{self.model.model_type} · {self.out_dir.name}")
            if self.start_step >= c.max_steps:  # resuming a finished run: nothing to train, report where it stands
                evaluation = self.evaluate()
        finally:
            if metrics is not None:
                metrics.close()
        sample = self.sample() if main and c.sample_tokens > 0 else None
        D.barrier(self.dist)
        return TrainResult(self.out_dir, c.max_steps, last.get("loss"), evaluation.get("val_loss"),
                           evaluation.get("val_bpb"), last.get("tokens_per_s"), sample, self.skipped)

    def sample(self) -> str:
        """Text generated from ``sample_prompt`` by the saved weights (a fresh, unwrapped model on rank 0)."""
        c = self.config
        model = load_pretrained(self.out_dir, device=self.device)
        prompt = self.tokenizer.encode(c.sample_prompt) or [0]
        ids = model.generate(torch.tensor([prompt], device=self.device), c.sample_tokens,
                             temperature=c.sample_temperature, top_k=None, seed=c.seed)
        text = c.sample_prompt + self.tokenizer.decode(ids[0, len(prompt):].tolist())
        atomic_write_text(self.out_dir / SAMPLE_NAME, text + "\n")
        return text

    def close(self) -> None:
        D.shutdown(self.dist)


def batch_logits(model, batch, reset_at_documents: bool, device=None, packed_model=None) -> torch.Tensor:
    """Logits (B, S, V) of a training batch, the model's state starting empty at every row.

    ``reset_at_documents``: also at every document start inside a row — the rows are then packed back to back as
    one sequence with ``cu_seqlens``, run by ``packed_model`` (default: ``model``). Where no document starts inside
    a row that is the same computation as the plain batch, which is faster (the batch dimension stays parallel), so
    the plain batch is run instead.
    """
    input_ids = batch.input_ids.to(device, non_blocking=True)
    B, S = input_ids.shape
    if reset_at_documents and bool(batch.doc_starts[:, 1:].any()):
        packed_model = model if packed_model is None else packed_model
        logits, _ = packed_model(input_ids.reshape(1, B * S), cu_seqlens=batch.cu_seqlens().to(device),
                                 return_state=False)
        return logits.reshape(B, S, -1)
    logits, _ = model(input_ids, return_state=False)
    return logits


def _dict_diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))
