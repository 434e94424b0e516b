"""Language modelling at equal parameters and tokens (xLSTM paper Sec. 4.3, Table 1, at toy scale).

Every model trains with the library's trainer (``xlstm_torch.training``: AdamW, warm-up + cosine, the same data
order by seed) on the embedded corpus with the byte tokenizer, for the same steps x batch x sequence length, at
the parameter count of xLSTM[1:1] of width ``width`` (``zoo.build_matched``). Rows are concatenated without
state resets (packing "concat") so that every model, Mamba included, sees identical batches. The metric is the
validation bits per byte.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from xlstm_torch.training.config import TrainConfig
from xlstm_torch.training.reporting import METRICS_NAME
from xlstm_torch.training.trainer import Trainer

from .zoo import build, build_matched, count_parameters

__all__ = ["run_lm"]

BYTE_VOCAB = 256


def run_lm(model_name: str, out: str | Path, *, steps: int = 300, seed: int = 0, width: int = 128,
           num_blocks: int = 2, seq_len: int = 128, batch_size: int = 16, lr: float = 3e-3, eval_every: int = 50,
           eval_batches: int = 16, data: list[str] | None = None) -> dict:
    """Train ``model_name`` with ``xlstm train``'s trainer into ``out``; returns the results dict."""
    kwargs = dict(num_blocks=num_blocks, num_heads=4, slstm_num_heads=4, context_length=seq_len)
    budget = count_parameters(build("xlstm-1:1", BYTE_VOCAB, width, **kwargs))
    model, model_width = build_matched(model_name, BYTE_VOCAB, budget, **kwargs)
    fields = {"model_type": model.model_type, **model.config.to_dict()}
    config = TrainConfig(model_preset=None, model=fields, data=data, seq_len=seq_len, batch_size=batch_size,
                         max_steps=steps, lr=lr, warmup_steps=max(1, steps // 10), eval_every=eval_every,
                         eval_batches=eval_batches, log_every=max(1, steps // 10), save_every=steps, keep_last=1,
                         packing="concat", seed=seed, device="cpu", threads=1, tensorboard=False, sample_tokens=0)
    start = time.time()
    trainer = Trainer(config, out, stream=io.StringIO())
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    rows = list(csv.DictReader(open(Path(out) / METRICS_NAME)))
    curve = [{"tokens": int(r["tokens"]), "val_loss": float(r["val_loss"]), "val_bpb": float(r["val_bpb"])}
             for r in rows if r.get("val_loss")]
    return {"task": "lm", "model": model_name, "seed": seed, "parameters": count_parameters(trainer.model),
            "width": model_width, "num_blocks": model.config.num_blocks if hasattr(model.config, "num_blocks")
            else model.config.num_layers, "steps": steps, "tokens": steps * batch_size * seq_len,
            "seq_len": seq_len, "batch_size": batch_size, "lr": lr, "val_loss": result.val_loss,
            "val_bpb": result.val_bpb, "train_loss": result.train_loss, "curve": curve,
            "wall_seconds": round(time.time() - start, 1)}
