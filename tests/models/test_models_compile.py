"""torch.compile of the debug model on CPU gives the same logits and state as eager mode."""

import pytest
import torch

import xlstm_torch


@pytest.mark.slow  # inductor: ~6 s with a warm cache, ~85 s cold on a loaded 2-core CPU
def test_compiled_debug_model_matches_eager():
    torch.manual_seed(0)
    model = xlstm_torch.from_preset("debug").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        expected, expected_state = model(ids)
        compiled = torch.compile(model)
        logits, state = compiled(ids)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.utils._pytree.tree_leaves(state.blocks), torch.utils._pytree.tree_leaves(expected_state.blocks)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
