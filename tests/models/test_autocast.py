"""Mixed precision: a training step of the paper model (mLSTM and sLSTM blocks) under bfloat16 autocast, the
trainer's GPU setting, here on the CPU: the custom autograd functions (head-wise products, causal conv) take
autocast's lower-precision activations next to float32 weights and hand back gradients in the weights' dtype."""

import torch
import torch.nn.functional as F

import xlstm_torch


def test_debug_model_trains_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = xlstm_torch.from_preset("debug")
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    exact_logits, _ = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(ids)
    assert logits.dtype == torch.bfloat16
    loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    exact = F.cross_entropy(exact_logits.flatten(0, 1), ids.flatten())
    assert abs(loss.item() - exact.item()) < 0.05 * exact.item()  # bfloat16 activations, the same model
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype, name
        assert torch.isfinite(p.grad).all(), name
