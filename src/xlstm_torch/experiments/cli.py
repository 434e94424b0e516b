"""``xlstm experiment``: the small-scale evidence of the xLSTM paper, one command per run or table.

    xlstm experiment formal --task parity --model xlstm-0:1 [--steps N --seed S --out DIR]
    xlstm experiment mqar --model xlstm-1:1 --seq-len 64 --num-pairs 4 --width 64 [--vocab-size --steps --seed --out]
    xlstm experiment lm --model transformer [--steps --seed --out]
    xlstm experiment table formal|mqar|lm [--budget-minutes M --jobs 2 --seeds 2 --out experiments]
    xlstm experiment table mqar --lr 1e-3 3e-3 ...   # a learning-rate sweep: the best rate per model and setting

Each run writes ``results.json`` into ``--out``; a table writes ``<out>/<NAME>.md`` and plots.
"""

from __future__ import annotations

import json
import sys
import time

RESTATE_HELP = ("the layout this project used until 2026-11-27: each query followed by its value in the input (the last "
                "query then answerable by elimination); default: Zoology's, the value only as the target")
QUERY_POWER_HELP = ("where the queries go: slot weights slot^(a-1) (default: Zoology's a = 0.01, most queries soon after "
                    "the context; 1.0: uniform, this project's MQAR runs until 2026-11-27 and the only choice with "
                    "--restate-answers)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("experiment", help="formal languages, MQAR and LM runs against the baselines",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="experiment", metavar="KIND", required=True)

    def common(p, steps):
        p.add_argument("--model", default="xlstm-1:1", help="xlstm-a:b, transformer, mamba or lstm")
        p.add_argument("--steps", type=int, default=steps, help="training steps (default %(default)s)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", default=None, help="folder for results.json (default runs/experiments/...)")
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")

    from .runner import FORMAL_CURRICULUM, FORMAL_LR, MQAR_HEADS, MQAR_LR, MQAR_VOCAB
    from .tasks import FORMAL_TASKS

    p = sub.add_parser("formal", help="one formal-language run (length generalisation)")
    common(p, 2000)
    p.add_argument("--task", required=True, choices=sorted(FORMAL_TASKS))
    p.add_argument("--width", type=int, default=64, help="xLSTM[1:1] width that sets the parameter budget")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=FORMAL_LR, help="peak learning rate (default %(default)s)")
    p.add_argument("--test-lengths", type=int, nargs="*", default=None, help="default 40 48 64 ... 256")
    p.add_argument("--test-examples", type=int, default=256, help="examples per test length")
    p.add_argument("--blocks", type=int, default=2, help="residual blocks (default 2)")
    p.add_argument("--heads", type=int, default=1, help="mLSTM / attention heads (default 1)")
    p.add_argument("--slstm-heads", type=int, default=1, help="sLSTM heads (default 1)")
    p.add_argument("--curriculum", type=float, default=FORMAL_CURRICULUM,
                   help="fraction of steps over which the longest train length grows to 40 (0: none; default %(default)s)")
    p.add_argument("--one-length-per-batch", action="store_true",
                   help="train on batches of one length (default: every string its own length, right-padded)")
    p.set_defaults(func=_formal)

    p = sub.add_parser("mqar", help="one multi-query associative recall run")
    common(p, 1500)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--num-pairs", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=MQAR_LR)
    p.add_argument("--vocab-size", type=int, default=MQAR_VOCAB,
                   help="token ids, keys from the lower half, values from the upper (default %(default)s, Zoology's)")
    p.add_argument("--heads", type=int, default=MQAR_HEADS, help="mLSTM / attention heads (default %(default)s)")
    p.add_argument("--slstm-heads", type=int, default=MQAR_HEADS, help="sLSTM heads (default %(default)s)")
    p.add_argument("--restate-answers", action="store_true", help=RESTATE_HELP)
    p.add_argument("--query-power", type=float, default=None, help=QUERY_POWER_HELP)
    p.set_defaults(func=_mqar)

    p = sub.add_parser("lm", help="one language-modelling run on the embedded corpus (bits per byte)")
    common(p, 300)
    p.add_argument("--width", type=int, default=128, help="xLSTM[1:1] width that sets the parameter budget")
    p.add_argument("--lr", type=float, default=3e-3)
    p.set_defaults(func=_lm)

    p = sub.add_parser("table", help="run a whole sweep and write a Markdown table and plots")
    p.add_argument("name", choices=["formal", "mqar", "lm"])
    p.add_argument("--out", default="experiments")
    p.add_argument("--budget-minutes", type=float, default=60.0, help="no new run starts after this much wall time")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--tasks", nargs="*", default=None, help="formal: tasks (default all)")
    p.add_argument("--settings", type=int, default=4, help="mqar: how many of (64,4),(128,8),(256,16),(512,64)")
    p.add_argument("--widths", type=int, nargs="*", default=[64], help="mqar: model widths")
    p.add_argument("--table-name", default=None,
                   help="file name (no suffix) of the table and plot (default: the sweep's, e.g. mqar_V256)")
    p.add_argument("--batch-size", type=int, default=None, help="mqar: batch size (default 64)")
    p.add_argument("--vocab-size", type=int, default=MQAR_VOCAB, help="mqar: vocabulary (default %(default)s, Zoology's)")
    p.add_argument("--lr", type=float, nargs="+", action="extend", default=None,
                   help=f"mqar: peak learning rate(s) (default {MQAR_LR}); with several, every cell runs at each and "
                        "the table keeps, per model and setting, the rate with the best validation accuracy (Zoology's "
                        "sweep)")
    p.add_argument("--heads", type=int, default=MQAR_HEADS,
                   help="mqar: heads of every mLSTM, sLSTM and attention layer (default %(default)s)")
    p.add_argument("--restate-answers", action="store_true", help="mqar: " + RESTATE_HELP)
    p.add_argument("--query-power", type=float, default=None, help="mqar: " + QUERY_POWER_HELP)
    p.add_argument("--curriculum", type=float, default=FORMAL_CURRICULUM,
                   help="formal: length curriculum fraction (0: none; default %(default)s)")
    p.set_defaults(func=_table)


def _threads(args) -> None:
    import torch

    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)


def _finish(result: dict, out: str) -> int:
    from .runner import write_json

    path = write_json(result, out)
    summary = {k: result[k] for k in ("task", "model", "seed", "parameters", "rescaled_accuracy", "accuracy",
                                      "val_bpb", "steps_run") if k in result}
    print(json.dumps(summary))
    print(f"wrote {path}")
    return 0


def _formal(args) -> int:
    _threads(args)
    from .runner import OptimSettings, run_formal

    start = time.time()
    result = run_formal(args.task, args.model, steps=args.steps, seed=args.seed, width=args.width,
                        batch_size=args.batch_size, curriculum=args.curriculum, test_examples=args.test_examples,
                        mixed_lengths=not args.one_length_per_batch,
                        num_blocks=args.blocks, num_heads=args.heads, slstm_num_heads=args.slstm_heads,
                        **({"test_lengths": tuple(args.test_lengths)} if args.test_lengths else {}), settings=OptimSettings(lr=args.lr),
                        eval_every=max(1, min(250, args.steps)), log=lambda s: print(s, file=sys.stderr))
    result["wall_seconds"] = round(time.time() - start, 1)
    return _finish(result, args.out or f"runs/experiments/formal/{args.task}/{args.model}/seed{args.seed}")


def _mqar(args) -> int:
    _threads(args)
    from .runner import OptimSettings, run_mqar

    start = time.time()
    result = run_mqar(args.model, seq_len=args.seq_len, num_pairs=args.num_pairs, width=args.width, steps=args.steps,
                      seed=args.seed, batch_size=args.batch_size, vocab_size=args.vocab_size,
                      num_heads=args.heads, slstm_num_heads=args.slstm_heads, settings=OptimSettings(lr=args.lr),
                      restate_answers=args.restate_answers, query_power=args.query_power,
                      eval_every=max(1, min(250, args.steps)), log=lambda s: print(s, file=sys.stderr))
    result["wall_seconds"] = round(time.time() - start, 1)
    return _finish(result, args.out or f"runs/experiments/mqar/{args.model}/seed{args.seed}")


def _lm(args) -> int:
    _threads(args)
    from .lm import run_lm

    out = args.out or f"runs/experiments/lm/{args.model}/seed{args.seed}"
    result = run_lm(args.model, f"{out}/run", steps=args.steps, seed=args.seed, width=args.width, lr=args.lr,
                    eval_every=max(1, min(50, args.steps)))
    return _finish(result, out)


def _table(args) -> int:
    from .tables import run_table

    if args.jobs < 1 or args.seeds < 1:
        raise SystemExit("--jobs and --seeds must be >= 1")
    run_table(args.name, args)
    return 0
