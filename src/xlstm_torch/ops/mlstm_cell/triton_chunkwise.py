"""mLSTM chunkwise form as Triton kernels (the GPU path). Work in progress."""

from __future__ import annotations

from .._triton import require_triton


def mlstm_triton(q, k, v, i, f, state=None, eps: float = 1e-6, chunk_size: int = 64, cu_seqlens=None):
    require_triton(q.device)
    raise NotImplementedError("mLSTM Triton kernels: being written")
