"""``xlstm demo``: run both cells on random data, check the fast forms against the reference, time them."""

from __future__ import annotations

import time

import torch

from xlstm_torch.ops import mlstm, slstm


def _time(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(args) -> int:
    torch.manual_seed(0)
    B, NH, S, D = 1, 4, args.seq_len, 64
    q, k, v = (torch.randn(B, NH, S, D, requires_grad=True) for _ in range(3))
    i = torch.randn(B, NH, S, requires_grad=True)
    f = (torch.randn(B, NH, S) + 3).requires_grad_(True)
    short = [x[:, :, :128].detach().double() for x in (q, k, v, i, f)]
    err = (mlstm(*short, backend="chunkwise") - mlstm(*short, backend="reference")).abs().max().item()
    print(f"mLSTM chunkwise vs step-by-step reference (float64, S=128): max abs diff {err:.2e}")

    def fwd_bwd():
        mlstm(q, k, v, i, f).sum().backward()

    t = _time(fwd_bwd)
    print(f"mLSTM forward+backward  B={B} NH={NH} S={S} DK=DV={D}: {B * S / t:,.0f} tokens/s")

    Bs, Ss, DH = 8, 256, 64
    wx = torch.randn(Bs, Ss, NH, 4, DH, requires_grad=True)
    r = (torch.randn(NH, 4, DH, DH) / DH**0.5).requires_grad_(True)
    b = torch.zeros(NH, 4, DH, requires_grad=True)
    t = _time(lambda: slstm(wx, r, b).sum().backward(), repeats=1)
    print(f"sLSTM forward+backward  B={Bs} NH={NH} S={Ss} DH={DH}: {Bs * Ss / t:,.0f} tokens/s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="check and time the mLSTM and sLSTM ops on random data")
    p.add_argument("--seq-len", type=int, default=4096)
    p.set_defaults(func=run)
