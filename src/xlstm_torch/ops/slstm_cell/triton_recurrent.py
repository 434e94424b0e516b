"""sLSTM as Triton kernels (the GPU path, ``backend="triton"``): xLSTM paper Sec. 2.2, eqs. 8-17.

The same function as reference.py. The recurrence is strictly sequential, so each kernel keeps
its time loop inside: one program per (head, block of batch rows) walks all S steps with the
head's recurrent blocks R[h] held on chip (_triton_kernels.py), instead of one launch per step.

- Forward: per step raw_t = wx_t + h_{t-1} R + b (tl.dot over a batch block of at least 16 rows,
  tl.dot's minimum), then the stabilised gating of reference.py. With gradients it stores the raw
  gates and [c̄, n̄, m] of every step (in the compute dtype) for the backward.
- Backward (a torch.autograd.Function): a reverse-time kernel computes the raw-gate gradients
  draw_t (B, S, NH, 4, DH) and carries [dh, dc̄, dn̄, dm] back to the initial state, the
  stabiliser's max included (ties split in half, as torch.maximum). Then dwx = draw, db = Σ draw
  and dR = Σ_t h_{t-1}ᵀ draw_t (one batched matmul) in torch.
- Tiling: BLOCK_B = 16 batch rows per program (tl.dot needs M >= 16), BLOCK_DH = DH rounded up to
  a power of two (at least 16), padding masked. R[h] is loaded once before the loop while
  BLOCK_DH <= RESIDENT_MAX_DH (4 x 64 x 64 values stay on chip); beyond that each step reloads
  one gate's block at a time (from L2). BLOCK_DH is at most MAX_DH (128): larger heads would
  need R split into tiles.
- Dtypes: bf16/fp16/fp32 inputs are read as they are; gate math, h @ R and states are float32
  (float64 for float64 inputs), tl.dot in IEEE precision (no TF32). h comes back in wx's dtype.
- Packed documents (``cu_seqlens``): the documents run as the rows of one batch, right-padded to
  the longest; each row's final state is taken at its own last step (the kernels take per-row
  lengths), so outputs, final states and gradients are exactly those of each document alone.
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from .._packing import documents_as_rows
from .._triton import require_triton
from .state import SLSTMState

BLOCK_B = 16  # batch rows per program: tl.dot's minimum M
MAX_DH = 128  # largest head dimension the kernels take (BLOCK_DH = next power of two >= DH)
RESIDENT_MAX_DH = 64  # up to this BLOCK_DH the recurrent blocks stay on chip across steps


@functools.cache
def _kernels():
    """The kernel module, imported on first use: the package imports without Triton."""
    from . import _triton_kernels

    return _triton_kernels


def _tiling(DH: int) -> dict:
    block_dh = max(16, 1 << (DH - 1).bit_length())
    # num_stages=1: no software pipelining of the per-step loads. Pipelined, the reloaded R blocks
    # were buffered three deep in shared memory (530-1500 KB at BLOCK_DH = 128, compiled for sm_90:
    # over the 227 KB limit); unpipelined every configuration needs at most 147 KB (float64, 128).
    return {"BLOCK_B": BLOCK_B, "BLOCK_DH": block_dh, "RESIDENT": block_dh <= RESIDENT_MAX_DH,
            "num_warps": 4 if block_dh <= 64 else 8, "num_stages": 1}


def _grid(B: int, NH: int) -> tuple[int, int]:
    return (NH, -(-B // BLOCK_B))


def _forward(wx, r, b, state0, lengths, store: bool):
    """h (B, S, NH, DH) and the final state (4, B, NH, DH) in the compute dtype; with ``store`` also
    the raw gates (B, S, NH, 4, DH) and [c̄, n̄, m] (B, S, NH, 3, DH) of every step."""
    B, S, NH, _, DH = wx.shape
    cdt = state0.dtype
    h = wx.new_empty(B, S, NH, DH, dtype=cdt)
    final = torch.empty_like(state0)
    gates = wx.new_empty(B, S, NH, 4, DH, dtype=cdt) if store else h  # h: a placeholder pointer
    cnm = wx.new_empty(B, S, NH, 3, DH, dtype=cdt) if store else h
    tiling = _tiling(DH)
    _kernels().slstm_forward_kernel[_grid(B, NH)](
        wx, r, b, state0, lengths, h, final, gates, cnm, B, S, NH, DH, STORE=store, **tiling)
    return h, final, gates, cnm


class _SLSTMTritonFunction(torch.autograd.Function):
    """Inputs wx, r, b (any float dtype), the initial state (4, B, NH, DH) in the compute dtype and the
    per-row lengths; outputs h (B, S, NH, DH) and the final state (4, B, NH, DH), compute dtype."""

    @staticmethod
    def forward(ctx, wx, r, b, state0, lengths):
        h, final, gates, cnm = _forward(wx, r, b, state0, lengths, store=True)
        ctx.save_for_backward(r, state0, lengths, gates, cnm, h)
        ctx.dtypes = (wx.dtype, r.dtype, b.dtype)
        return h, final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_final):
        r, state0, lengths, gates, cnm, h = ctx.saved_tensors
        B, S, NH, _, DH = gates.shape
        cdt = state0.dtype
        grad_h = torch.zeros_like(h) if grad_h is None else grad_h.to(cdt).contiguous()
        grad_final = torch.zeros_like(state0) if grad_final is None else grad_final.to(cdt).contiguous()
        draw = torch.empty_like(gates)  # (B, S, NH, 4, DH)
        grad_state0 = torch.empty_like(state0)
        _kernels().slstm_backward_kernel[_grid(B, NH)](
            r, state0, lengths, gates, cnm, grad_h, grad_final, draw, grad_state0, B, S, NH, DH, **_tiling(DH))
        need = ctx.needs_input_grad
        d_wx = draw.to(ctx.dtypes[0]) if need[0] else None
        d_r = d_b = None
        if need[1]:  # dR[h, g] = Σ_{b,t} h_{t-1}ᵀ draw_t[g], one matmul per head
            h_prev = torch.cat([state0[0].unsqueeze(1), h[:, :-1]], dim=1)  # (B, S, NH, DH)
            d_r4 = torch.bmm(h_prev.permute(2, 3, 0, 1).reshape(NH, DH, B * S),
                             draw.permute(2, 0, 1, 3, 4).reshape(NH, B * S, 4 * DH))  # (NH, DH, 4·DH)
            d_r = d_r4.view(NH, DH, 4, DH).transpose(1, 2).to(ctx.dtypes[1])  # (NH, 4, DH, DH)
        if need[2]:
            d_b = draw.sum((0, 1)).to(ctx.dtypes[2])  # (NH, 4, DH)
        return d_wx, d_r, d_b, grad_state0 if need[3] else None, None


def _initial_state(state, B: int, NH: int, DH: int, dtype, device) -> torch.Tensor:
    """(4, B, NH, DH) [h, c̄, n̄, m]: the given state (differentiable) or the empty one."""
    if state is not None:
        return torch.stack([x.to(dtype) for x in state]).contiguous()
    empty = torch.zeros(4, B, NH, DH, dtype=dtype, device=device)
    empty[3] = float("-inf")
    return empty


def _run(wx, r, b, state, lengths):
    """h (B, S, NH, DH) in the compute dtype and the final SLSTMState, each row stopping at its length."""
    B, S, NH, _, DH = wx.shape
    cdt = torch.float64 if wx.dtype == torch.float64 else torch.float32
    state0 = _initial_state(state, B, NH, DH, cdt, wx.device)
    wx, r, b = wx.contiguous(), r.contiguous(), b.contiguous()
    if torch.is_grad_enabled() and any(x.requires_grad for x in (wx, r, b, state0)):
        h, final = _SLSTMTritonFunction.apply(wx, r, b, state0, lengths)
    else:  # nothing to differentiate: store nothing per step
        h, final, _, _ = _forward(wx, r, b, state0, lengths, store=False)
    return h, SLSTMState(*final.unbind(0))


@torch.compiler.disable
def slstm_triton(wx, r, b, state: SLSTMState | None = None, cu_seqlens: tuple[int, ...] | None = None):
    """Same contract as ``slstm_reference``: wx (B, S, NH, 4, DH), r (NH, 4, DH, DH), b (NH, 4, DH),
    state (h, c̄, n̄, m) each (B, NH, DH). wx, r, b may be bfloat16/float16/float32/float64 and are
    read as they are; DH <= MAX_DH.

    Returns h (B, S, NH, DH) in wx's dtype and the final SLSTMState (float32, float64 for float64
    inputs). Packed documents (``cu_seqlens``, B == 1): each document runs from row d of ``state``
    (or the empty state); the final state has one row per document.
    """
    require_triton(wx.device)
    B, S, NH, _, DH = wx.shape
    if DH > MAX_DH:
        raise ValueError(f'backend="triton" takes head dimensions DH <= {MAX_DH}, got wx with DH={DH}')
    if cu_seqlens is None:
        lengths = torch.full((B,), S, dtype=torch.int32, device=wx.device)
        h, final = _run(wx, r, b, state, lengths)
        return h.to(wx.dtype), final
    # Documents as the rows of one batch, right-padded: padding comes after a document's last step,
    # so it reaches neither its outputs nor its final state (taken at the row's own length).
    gather, lengths, unpad = documents_as_rows(cu_seqlens, wx.device)
    h, final = _run(wx[0][gather], r, b, state, lengths.to(torch.int32))  # h (D, L, NH, DH)
    return h.flatten(0, 1)[unpad].unsqueeze(0).to(wx.dtype), final  # (1, S, NH, DH): documents back to back
