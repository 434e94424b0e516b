"""``xlstm train``: train a language model from a recipe, on one process or under torchrun.

    xlstm train                                   the default recipe on the embedded corpus (stdlib sources)
    xlstm train --preset debug --max-steps 50     a shipped recipe (``xlstm train --list``)
    xlstm train --config my.yaml --data docs/ notes.jsonl --out runs/mine lr=1e-3 model.num_blocks=6
    xlstm train --out runs/mine --resume          continue a killed or finished run (e.g. with a larger --max-steps)
    torchrun --nproc_per_node 2 -m xlstm_torch.cli train --preset default distributed=fsdp
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_PRESET = "default"


def build_config(args):
    from .config import TrainConfig, load_recipe
    from .trainer import TRAIN_CONFIG_NAME

    overrides = list(args.overrides)
    if args.data:
        overrides.append("data=" + json.dumps(args.data))
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    saved = Path(args.out) / TRAIN_CONFIG_NAME if args.out else None
    if args.resume and args.preset is None and args.config is None and saved is not None and saved.is_file():
        # Resume from the recipe the run was started with; the overrides may change what RESUMABLE_CHANGES allows.
        base = TrainConfig.from_dict(json.loads(saved.read_text()), source=str(saved))
        return load_recipe(base=base.to_dict(), overrides=overrides)
    preset = args.preset if args.preset is not None or args.config is not None else DEFAULT_PRESET
    return load_recipe(preset=preset if args.config is None else None, config_file=args.config, overrides=overrides)


def default_out(args) -> Path:
    """``runs/<recipe>-<n>``: a new folder (the first free n), or with --resume the newest existing one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would pick its own "first free" folder
        raise FileNotFoundError("under torchrun give --out (every process must name the same folder)")
    name = Path(args.config).stem if args.config else (args.preset or DEFAULT_PRESET)
    taken = sorted((int(p.name.rsplit("-", 1)[1]), p) for p in Path("runs").glob(f"{name}-*")
                   if p.name.rsplit("-", 1)[1].isdigit())
    if args.resume:
        if not taken:
            raise FileNotFoundError(f"--resume: no run folder runs/{name}-N to resume; give --out")
        return taken[-1][1]
    return Path("runs") / f"{name}-{taken[-1][0] + 1 if taken else 1}"


def run(args) -> int:
    from .checkpointing import CheckpointError
    from .config import RecipeError, list_recipes
    from .data import DataError
    from .trainer import RunFolderError, Trainer, TrainingError

    if args.list:
        print("\n".join(list_recipes()))
        return 0
    trainer = None
    try:
        if args.out is None:
            args.out = str(default_out(args))
        config = build_config(args)
        trainer = Trainer(config, args.out, resume=args.resume)
        if trainer.dist.is_main:
            n_params = sum(p.numel() for p in trainer.model.parameters())
            print(f"xlstm train: {trainer.model.model_type} model, {n_params / 1e6:.2f}M parameters | "
                  f"{len(trainer.train_data):,} training / {len(trainer.val_data):,} validation tokens | "
                  f"{trainer.dist.world_size} process(es) on {trainer.device} | out: {args.out}"
                  + (f" | resuming at step {trainer.start_step}" if trainer.start_step else ""), flush=True)
        result = trainer.fit()
    except (RecipeError, DataError, RunFolderError, CheckpointError, TrainingError, FileNotFoundError) as err:
        print(f"xlstm train: error: {err}", file=sys.stderr)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
    if trainer.dist.is_main:
        trained = (f" | train loss {result.train_loss:.4f} | {result.tokens_per_s:,.0f} tokens/s"
                   if result.train_loss is not None else " (nothing left to train)")
        print(f"done: {result.steps} steps{trained} | validation loss {result.val_loss:.4f} "
              f"({result.val_bpb:.3f} bits/byte)")
        print(f"saved: {args.out}/model.safetensors (+ config.json, metrics.csv, loss.png, checkpoints/)")
        if result.sample is not None:
            print("sample:\n" + result.sample)
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a language model (default: a small xLSTM on the embedded corpus)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"a shipped recipe (default: {DEFAULT_PRESET}); see --list")
    source.add_argument("--config", help="a YAML recipe file")
    p.add_argument("--data", nargs="+", metavar="PATH",
                   help="text files/folders, .jsonl files, or saved HF datasets (default: the embedded corpus)")
    p.add_argument("--out", help="the run folder (default: a new runs/<recipe>-<n>; with --resume the newest one)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides the recipe)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--list", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. lr=1e-3 model.num_blocks=6")
    p.set_defaults(func=run)
