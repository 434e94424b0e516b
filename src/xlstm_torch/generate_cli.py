"""``xlstm generate CHECKPOINT_DIR --prompt TEXT``: load a checkpoint and continue a prompt, streaming.

The text is encoded with the checkpoint's ``tokenizer.json`` if it has one, else as UTF-8 bytes
(``xlstm_torch.tokenizers``); generation is ``xlstm_torch.generation.stream_generate``.
"""

from __future__ import annotations

import sys

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run(args) -> int:
    from xlstm_torch.checkpoint import load_pretrained
    from xlstm_torch.generation import stream_generate
    from xlstm_torch.tokenizers import load_tokenizer

    try:
        model = load_pretrained(args.checkpoint, device=args.device, dtype=_DTYPES.get(args.dtype))
        tokenizer = load_tokenizer(args.checkpoint)
        prompt_ids = tokenizer.encode(args.prompt)
        if not prompt_ids:
            raise ValueError("--prompt must not be empty")
        vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab_size is not None and max(prompt_ids) >= vocab_size:
            raise ValueError(f"the prompt encodes to id {max(prompt_ids)} but the model's vocab_size is "
                             f"{vocab_size}: the tokenizer does not fit this checkpoint")
        steps = stream_generate(model, torch.tensor([prompt_ids]), args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                seed=args.seed, eos_token_id=args.eos_token_id, compile=args.compile)
    except (FileNotFoundError, ValueError, TypeError, ImportError) as err:
        print(f"xlstm generate: error: {err}", file=sys.stderr)
        return 2

    sys.stdout.write(args.prompt)
    new_ids: list[int] = []
    shown = ""
    for tokens in steps:
        if args.eos_token_id is not None and int(tokens[0]) == args.eos_token_id:
            break
        new_ids.append(int(tokens[0]))
        text = tokenizer.decode(new_ids)
        if text.endswith("\ufffd"):
            continue  # maybe an incomplete multi-byte character: wait for the next token
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text
    sys.stdout.write(tokenizer.decode(new_ids)[len(shown):] + "\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue a text prompt with a saved model",
                       description="Load CHECKPOINT_DIR (see xlstm_torch.checkpoint) and print the prompt "
                                   "followed by the generated text as it is produced.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="directory with config.json and model.safetensors")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="at most this many new tokens (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens only")
    p.add_argument("--top-p", type=float, default=None, help="sample from the nucleus of probability P only")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--eos-token-id", type=int, default=None, help="stop when this token is produced")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="cast the weights (default: as stored)")
    p.add_argument("--compile", action="store_true",
                   help="decode through torch.compile: the first token waits for the compiler (tens of seconds "
                        "on a CPU), every later one is faster")
    p.set_defaults(func=run)
