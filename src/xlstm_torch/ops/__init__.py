"""The xLSTM cells as pure functions (no modules, no configs): the op contract of MATH.md.

    mlstm(q, k, v, i, f, *, state=None, return_state=False, backend=None, chunk_size=None, eps=1e-6)
    slstm(wx, r, b, *, state=None, return_state=False, backend=None)
    mlstm_step(q, k, v, i, f, state=None, eps=1e-6)   one decoding step, (B, NH, D) inputs
"""

from .mlstm_cell import MLSTMState, empty_mlstm_state, mlstm, mlstm_step
from .slstm_cell import SLSTMState, empty_slstm_state, slstm

__all__ = ["mlstm", "mlstm_step", "slstm", "MLSTMState", "SLSTMState", "empty_mlstm_state", "empty_slstm_state"]
