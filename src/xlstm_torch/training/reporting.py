"""What a run reports: a progress bar on the terminal, ``metrics.csv``, TensorBoard (when installed), ``loss.png``.

Only the main process (rank 0) writes. ``metrics.csv`` has one row per optimizer step (validation columns filled
on evaluation steps); a resumed run first cuts the rows after its checkpoint, so the file of a killed-and-resumed
run reads like the file of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

from .checkpointing import atomic_write_bytes, atomic_write_text

__all__ = ["MetricsLog", "ProgressBar", "plot_losses", "METRICS_NAME", "PLOT_NAME", "COLUMNS"]

METRICS_NAME = "metrics.csv"
PLOT_NAME = "loss.png"
COLUMNS = ["step", "tokens", "lr", "loss", "grad_norm", "tokens_per_s", "val_loss", "val_bpb", "val_ppl",
           "elapsed_s", "skipped"]


class MetricsLog:
    """Append-only CSV of per-step metrics, plus TensorBoard scalars when the package is there."""

    def __init__(self, run_dir: Path, *, resume_step: int | None, tensorboard: bool) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        if resume_step is not None and self.path.is_file():
            self._truncate_after(resume_step)
        else:
            atomic_write_text(self.path, ",".join(COLUMNS) + "\n")
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard not installed: the CSV and the plot are the record
                self._tb = None

    def _truncate_after(self, step: int) -> None:
        rows = [r for r in read_metrics(self.path) if int(r["step"]) <= step]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, out.getvalue())

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # exact: a resumed run's losses compare bit for bit
    return str(value)


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class ProgressBar:
    """One status line: redrawn in place on a terminal, printed every ``every`` steps otherwise."""

    def __init__(self, total: int, start: int, every: int, stream=None) -> None:
        self.total, self.every = total, every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start_step, self.t0 = start, time.perf_counter()

    def update(self, step: int, text: str) -> None:
        done = step + 1
        if not self.tty and done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] {done}/{self.total} {text} | eta {_duration(eta)}"
        if self.tty:
            self.stream.write("\r" + line.ljust(110))
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (evaluation, checkpoint), not overwritten by the bar."""
        self.stream.write(("\r" if self.tty else "") + text.ljust(110 if self.tty else 0) + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def plot_losses(metrics_path: Path, out_path: Path, title: str = "") -> bool:
    """Training loss (raw and smoothed) and validation loss against steps, as a PNG. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = read_metrics(metrics_path)
    steps = [int(r["step"]) for r in rows if r["loss"]]
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if losses:
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        ax.plot(steps, _ema(losses, 0.95), color="tab:blue", linewidth=1.5, label="train (smoothed)")
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", markersize=3, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(out_path, buffer.getvalue())
    return True


def _ema(values: list[float], decay: float) -> list[float]:
    out, acc, weight = [], 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(out[-1] if out else v)
            continue
        acc = decay * acc + (1 - decay) * v
        weight = decay * weight + (1 - decay)
        out.append(acc / weight)
    return out
