"""Sweeps behind ``xlstm experiment table NAME``: run every cell (model x setting x seed) under a CPU budget,
at most ``jobs`` runs at a time with one thread each, keep each run's results.json, and write a Markdown table
(mean and spread over seeds) and a plot into the output folder.

A cell whose results.json exists and was run with the cell's settings is not run again, so an interrupted sweep
resumes; one run with other settings (steps, batch size, vocabulary, learning rate, ...) is run again. Cells that the
budget did not reach are listed as missing in the table, never filled in.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

__all__ = ["TABLES", "run_table"]

FORMAL_MODELS = ("xlstm-1:0", "xlstm-0:1", "xlstm-1:1", "transformer", "mamba", "lstm")
MQAR_MODELS = ("xlstm-1:1", "xlstm-1:0", "transformer", "mamba", "lstm")
LM_MODELS = ("xlstm-1:0", "xlstm-1:1", "xlstm-7:1", "transformer", "mamba", "lstm")


def _cell_run(kind: str, kwargs: dict, out: str) -> dict:
    """One run in a worker process (one thread)."""
    import torch

    torch.set_num_threads(1)
    from .runner import run_formal, run_mqar, write_json

    if kind == "formal":
        result = run_formal(**kwargs)
    elif kind == "mqar":
        result = run_mqar(**kwargs)
    else:
        from .lm import run_lm

        result = run_lm(out=str(Path(out) / "run"), **kwargs)
    write_json(result, out)
    return result


def _cells(name: str, args) -> list[tuple[str, dict, str]]:
    seeds = range(args.seeds)
    cells = []
    if name == "formal":
        from .runner import FORMAL_CURRICULUM
        from .tasks import FORMAL_TASKS

        tasks = args.tasks or list(FORMAL_TASKS)
        # seed-major: a sweep cut short by its budget has one seed of every task before the second of any
        for seed in seeds:
            for task in tasks:
                for model in args.models or FORMAL_MODELS:
                    kw = dict(task_name=task, model_name=model, seed=seed, steps=args.steps or 2000,
                              curriculum=getattr(args, "curriculum", FORMAL_CURRICULUM))
                    cells.append(("formal", kw, f"{task}/{model}/seed{seed}"))
    elif name == "mqar":
        from .runner import MQAR_HEADS, MQAR_LR, MQAR_VOCAB, OptimSettings

        settings = [(64, 4), (128, 8), (256, 16), (512, 64)][: args.settings]
        vocab = getattr(args, "vocab_size", None) or MQAR_VOCAB
        tag = _mqar_tag(args)
        restate = bool(getattr(args, "restate_answers", False))
        power = _query_power(args)
        heads = getattr(args, "heads", None) or MQAR_HEADS
        lrs = getattr(args, "lr", None) or [MQAR_LR]
        lrs = list(dict.fromkeys([lrs] if isinstance(lrs, float) else lrs))  # a rate given twice runs once
        if any(not lr > 0 for lr in lrs):
            raise ValueError(f"--lr must be positive, got {lrs}")
        for seq_len, pairs in settings:
            for width in args.widths:
                for model in args.models or MQAR_MODELS:
                    for lr in lrs:
                        for seed in seeds:
                            kw = dict(model_name=model, seq_len=seq_len, num_pairs=pairs, width=width, seed=seed,
                                      steps=args.steps or 1500, batch_size=getattr(args, "batch_size", None) or 64,
                                      vocab_size=vocab, num_heads=heads, slstm_num_heads=heads,
                                      settings=OptimSettings(lr=lr), restate_answers=restate,
                                      query_power=power)
                            cells.append(("mqar", kw, f"L{seq_len}_kv{pairs}{tag}/d{width}/{model}{_lr_tag(lr)}/seed{seed}"))
    else:
        for model in args.models or LM_MODELS:
            for seed in seeds:
                cells.append(("lm", dict(model_name=model, seed=seed, steps=args.steps or 300), f"{model}/seed{seed}"))
    return cells


def _lr_tag(lr: float) -> str:
    """The folder level of an MQAR run at a learning rate other than the default ("/lr0.003"): runs at several
    rates (``--lr A B``) live side by side, and the default's runs keep their folders."""
    from .runner import MQAR_LR

    return "" if lr == MQAR_LR else f"/lr{lr!r}"  # repr: the shortest exact form, two rates never share a folder


def _run_lr(result: dict) -> float:
    from .runner import MQAR_LR

    return result.get("optim", {}).get("lr", MQAR_LR)


def _best_lr(results: list[dict]) -> tuple[list[dict], list[str]]:
    """Zoology's sweep: per (setting, width, model), keep the runs of the learning rate with the best mean
    validation accuracy (the test accuracy plays no part in the choice, except for runs from before the validation
    accuracy was recorded, marked in the sweep row; ties go to the smaller rate).
    Returns the kept runs and, for cells run at several rates, one table row each."""
    kept, rows = [], []
    for (L, kv, w, m), rs in _group(results, "seq_len", "num_pairs", "width", "model").items():  # the sweep's order
        by_lr: dict = {}
        for r in rs:
            by_lr.setdefault(_run_lr(r), []).append(r)
        # runs from before the best validation accuracy was recorded are scored by their test accuracy, marked
        scored = {lr: [r.get("best_val_accuracy", r["accuracy"]) for r in runs] for lr, runs in by_lr.items()}
        score = {lr: statistics.fmean(values) for lr, values in scored.items()}
        best = max(sorted(by_lr), key=lambda lr: score[lr])
        kept += by_lr[best]
        if len(by_lr) > 1:
            cells = [f"{lr:g}: " + ("val" if all("best_val_accuracy" in r for r in by_lr[lr]) else "val/test (old runs)")
                     + f" {score[lr]:.2f}, test " + _mean_spread([r["accuracy"] for r in by_lr[lr]])
                     + (" **kept**" if lr == best else "") for lr in sorted(by_lr)]
            rows.append(f"| ({L}, {kv}) | {w} | {m} | " + "; ".join(cells) + " |")
    return kept, rows


def _query_power(args) -> float:
    """The MQAR query-position power of a sweep (``tasks.mqar_query_power``), checked before any cell starts rather
    than failing in each."""
    from .tasks import mqar_query_power

    return mqar_query_power(getattr(args, "query_power", None), bool(getattr(args, "restate_answers", False)),
                            name="--query-power")


def _mqar_tag(args) -> str:
    """A reduced MQAR vocabulary, the layout with restated answers or query positions other than Zoology's power law
    (``tasks.MQARTask``) make a different task: its runs, table and plot get their own names ("_V256",
    "_V256_restated", "_V256_uniform", "_V256_power0.5"); Zoology's task keeps the plain ones. The restated layout
    has uniform positions only, and its name says so."""
    from .runner import MQAR_VOCAB
    from .tasks import MQAR_QUERY_POWER

    vocab = getattr(args, "vocab_size", None) or MQAR_VOCAB
    restated = bool(getattr(args, "restate_answers", False))
    power = _query_power(args)
    if restated or power == MQAR_QUERY_POWER:
        where = ""
    else:
        where = "_uniform" if power == 1.0 else f"_power{power!r}"
    return ("" if vocab == MQAR_VOCAB else f"_V{vocab}") + ("_restated" if restated else "") + where


def run_table(name: str, args, log=print) -> Path:
    """Run the sweep ``name`` ("formal", "mqar" or "lm") and write ``<out>/<name>.md`` and plots (MQAR at a reduced
    vocabulary V: ``<out>/mqar_V<V>.md``)."""
    out = Path(args.out)
    runs = out / "runs" / name
    cells = _cells(name, args)
    deadline = time.time() + args.budget_minutes * 60
    start = time.time()
    todo = [c for c in cells if not _done(runs / c[2], c[1])]
    log(f"{name}: {len(cells)} cells, {len(cells) - len(todo)} already done, budget {args.budget_minutes} min, "
        f"{args.jobs} at a time")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        pending = {}
        while todo or pending:
            while todo and len(pending) < args.jobs and time.time() < deadline:
                kind, kw, key = todo.pop(0)
                pending[pool.submit(_cell_run, kind, kw, str(runs / key))] = key
            if not pending:
                break
            done = next(iter(_wait_first(pending)))
            key = pending.pop(done)
            try:
                done.result()
                log(f"  done {key}  ({time.time() - start:.0f}s)")
            except Exception as err:  # a failed cell is reported in the table, the sweep goes on
                log(f"  FAILED {key}: {err}")
    results = [json.loads((runs / c[2] / "results.json").read_text()) for c in cells if _done(runs / c[2], c[1])]
    missing = [c[2] for c in cells if not _done(runs / c[2], c[1])]
    stem = getattr(args, "table_name", None) or name + (_mqar_tag(args) if name == "mqar" else "")
    text = _WRITERS[name](results, out, stem) if results else "No finished cells.\n"
    if missing:
        text += f"\nMissing cells (budget reached or failed): {', '.join(missing)}\n"
    path = out / f"{stem}.md"
    path.write_text(text)
    log(f"wrote {path} ({time.time() - start:.0f}s)")
    return path


# What a result written before a field was recorded was run with: MQAR runs before "restate_answers" used that layout,
# and every MQAR run before "query_power" had uniform query positions.
_BEFORE_RECORDED = {"restate_answers": True, "query_power": 1.0}


def _recorded(result: dict) -> dict:
    """A stored result with the fields it predates filled in as they were run."""
    return {**_BEFORE_RECORDED, **result}


def _done(folder: Path, kwargs: dict) -> bool:
    """Whether ``folder`` holds the results.json of a run with ``kwargs``: every argument the result records
    (steps, batch size, vocabulary, ...; the optimizer settings as "optim") must be equal."""
    path = folder / "results.json"
    if not path.exists():
        return False
    result = _recorded(json.loads(path.read_text()))
    recorded = dict(kwargs)
    if "settings" in recorded:
        recorded["optim"] = asdict(recorded.pop("settings"))
    return all(result[k] == v for k, v in recorded.items() if k in result)


def _wait_first(pending):
    from concurrent.futures import FIRST_COMPLETED, wait

    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
    return done


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {spread:.2f} (n={len(values)})"


def _group(results, *keys):
    groups: dict = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def _plt():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _formal_table(results, out: Path, stem: str) -> str:
    groups = _group(results, "task", "model")
    tasks = list(dict.fromkeys(r["task"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    lines = ["| task | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for task in tasks:
        cells = [_mean_spread([r["rescaled_accuracy"] for r in groups.get((task, m), [])]) for m in models]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    params = {m: sorted({r["parameters"] for r in results if r["model"] == m}) for m in models}
    text = ("Rescaled accuracy over test lengths 41-256 (0 = chance, 1 = perfect), mean ± half-range over seeds.\n\n"
            + "\n".join(lines) + "\n\nParameters: " + ", ".join(f"{m} {p}" for m, p in params.items()) + "\n")
    plt = _plt()
    if plt:
        for task in tasks:
            fig, ax = plt.subplots(figsize=(6, 4))
            for m in models:
                rs = groups.get((task, m), [])
                if rs:
                    lengths = sorted(int(n) for n in rs[0]["accuracy_by_length"])
                    acc = [statistics.fmean(r["accuracy_by_length"][str(n)] if str(n) in r["accuracy_by_length"]
                                            else r["accuracy_by_length"][n] for r in rs) for n in lengths]
                    ax.plot(lengths, acc, marker="o", label=m)
            ax.axvline(40, color="gray", ls=":")
            ax.set(xlabel="test length", ylabel="accuracy", title=task)
            ax.legend(fontsize=7)
            fig.savefig(out / f"{stem}_{task}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
    return text


def _mqar_table(results, out: Path, stem: str) -> str:
    results, sweep_rows = _best_lr(results)
    restated = any(_recorded(r)["restate_answers"] for r in results)  # tasks.MQARTask's two layouts
    groups = _group(results, "seq_len", "num_pairs", "width", "model")
    models = list(dict.fromkeys(r["model"] for r in results))
    settings = sorted({(r["seq_len"], r["num_pairs"], r["width"]) for r in results})
    vocabs = sorted({r["vocab_size"] for r in results})
    heads = sorted({r["num_heads"] for r in results if "num_heads" in r})  # runs from before it was recorded: none
    lines = ["| (seq len, kv pairs) | width | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for s in settings:
        cells = [_mean_spread([r["accuracy"] for r in groups.get((*s, m), [])]) for m in models]
        lines.append(f"| ({s[0]}, {s[1]}) | {s[2]} | " + " | ".join(cells) + " |")
    params = {m: sorted({r["parameters"] for r in results if r["model"] == m}) for m in models}
    steps = {m: sorted({r["steps_run"] for r in results if r["model"] == m}) for m in models}
    ranked = _group([r for r in results if "accuracy_by_query_rank" in r], "seq_len", "num_pairs", "width", "model")
    rank_lines = []
    if ranked:
        most = max(key[1] for key in ranked)
        why = ("the last one can be answered by elimination, recall shows at q1" if restated
               else "every query needs recall; later queries sit farther from the context")
        rank_lines = ["", f"Accuracy by query rank (q1 = the earliest query of a row; {why}), mean over seeds:", "",
                      "| (seq len, kv pairs) | width | model | " + " | ".join(f"q{j + 1}" for j in range(most)) + " |",
                      "|---|---|---|" + "---|" * most]
        for (L, kv, w, m), rs in sorted(ranked.items()):
            means = [statistics.fmean(r["accuracy_by_query_rank"][j] for r in rs) for j in range(kv)]
            rank_lines.append(f"| ({L}, {kv}) | {w} | {m} | " + " | ".join(f"{a:.2f}" for a in means) + " |")
    run_lines = ["", "Per run:", "", "| (seq len, kv pairs) | width | model | seed | steps run | best val acc | test acc "
                 "| train time |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["seq_len"], r["num_pairs"], r["width"], r["model"], r["seed"])):
        run_lines.append(f"| ({r['seq_len']}, {r['num_pairs']}) | {r['width']} | {r['model']} | {r['seed']} | "
                         f"{r['steps_run']:,} | {r['best_val_accuracy']:.3f} | {r['accuracy']:.3f} | "
                         f"{_train_time(r)} |")
    plt = _plt()
    if plt:
        fig, ax = plt.subplots(figsize=(6, 4))
        if len({s[2] for s in settings}) > 1:  # accuracy against width, one line per model and setting
            for (L, kv) in sorted({(s[0], s[1]) for s in settings}):
                for m in models:
                    pts = [(w, statistics.fmean(r["accuracy"] for r in groups[(L, kv, w, m)]))
                           for (l2, k2, w) in settings if (l2, k2) == (L, kv) and (L, kv, w, m) in groups]
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=f"{m} ({L},{kv})")
            ax.set(xlabel="model width", ylabel="accuracy", xscale="log", title="MQAR")
            widths = sorted({s[2] for s in settings})
            ax.set_xticks(widths, [str(w) for w in widths])  # the widths run, not powers of ten
            ax.minorticks_off()
        else:  # one width: validation accuracy during training, one line per run
            for j, ((L, kv, w, m), rs) in enumerate(sorted(groups.items())):
                for k, r in enumerate(rs):
                    ax.plot([h["step"] for h in r["history"]], [h["val_accuracy"] for h in r["history"]],
                            color=f"C{j}", marker=".", label=f"{m} ({L},{kv})" if k == 0 else None)
            ax.set(xlabel="training step", ylabel="validation accuracy", title=f"MQAR, width {settings[0][2]}")
        ax.legend(fontsize=6)
        fig.savefig(out / f"{stem}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
    powers = sorted({_recorded(r)["query_power"] for r in results})
    where = ", ".join("uniform" if a == 1.0 else f"power law a = {a:g}" for a in powers)
    layout = ("answers restated after the queries" if restated else "Zoology's layout") + f"; query positions {where}"
    return (f"MQAR accuracy at the answer positions ({layout}; vocabulary {', '.join(map(str, vocabs))}"
            + (f"; heads per layer {', '.join(map(str, heads))}" if heads else "") + "), mean ± half-range over seeds.\n\n" + "\n".join(lines) + "\n\nParameters: " + ", ".join(f"{m} {p}" for m, p in params.items())
            + "\n\nSteps run (early stop at validation accuracy 1.0): "
            + ", ".join(f"{m} {n}" for m, n in steps.items()) + "\n" + "\n".join(rank_lines) + "\n"
            + "\n".join(run_lines) + "\n"
            + ("\nLearning rates (cells run at several: the rate with the best mean validation accuracy is kept "
               "above; test accuracy mean ± half-range over seeds):\n\n| (seq len, kv pairs) | width | model | "
               "peak lr: accuracy |\n|---|---|---|---|\n" + "\n".join(sweep_rows) + "\n" if sweep_rows else ""))


def _train_time(result: dict) -> str:
    """A run's training time and time per step, or "–" for runs from before it was recorded."""
    if "train_seconds" not in result:
        return "–"
    seconds = result["train_seconds"]
    return f"{seconds:,.0f} s ({seconds / max(result['steps_run'], 1):.2f} s/step)"


def _lm_table(results, out: Path, stem: str) -> str:
    groups = {key[0]: rs for key, rs in _group(results, "model").items()}
    lines = ["| model | parameters | width x blocks | tokens | val bits/byte | val loss (nats) |", "|---|---|---|---|---|---|"]
    for m, rs in groups.items():
        lines.append(f"| {m} | {rs[0]['parameters']:,} | {rs[0]['width']} x {rs[0]['num_blocks']} | {rs[0]['tokens']:,} | "
                     f"{_mean_spread([r['val_bpb'] for r in rs])} | {_mean_spread([r['val_loss'] for r in rs])} |")
    plt = _plt()
    if plt:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, rs in groups.items():
            curve = rs[0]["curve"]
            ax.plot([p["tokens"] for p in curve],
                    [statistics.fmean(r["curve"][j]["val_loss"] for r in rs) for j in range(len(curve))],
                    marker="o", label=m)
        ax.set(xlabel="training tokens", ylabel="validation loss (nats/byte)", title="LM, embedded corpus")
        ax.legend(fontsize=7)
        fig.savefig(out / f"{stem}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
    return ("Validation bits per byte on the embedded corpus, equal parameters and tokens, mean ± half-range over "
            "seeds.\n\n" + "\n".join(lines) + "\n")


_WRITERS = {"formal": _formal_table, "mqar": _mqar_table, "lm": _lm_table}
TABLES = tuple(_WRITERS)
