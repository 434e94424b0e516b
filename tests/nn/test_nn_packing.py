"""Packed documents (``cu_seqlens``) through the causal conv, the layers and the blocks: the packed call
equals each document run alone (outputs, per-document states, input and parameter gradients)."""

import pytest
import torch

from tests.helpers import assert_close, cat_rows, cu_seqlens_of, document_spans, select_rows
from tests.nn.test_nn_blocks import BLOCKS, LAYERS, randomize_
from xlstm_torch.nn import CausalConv1d

# Documents shorter than the conv's K-1 = 3 inputs of state, of one token, across the chunk size 4
# of the test blocks and across the sLSTM backend's 64-step runs.
LENGTHS = [1, 2, 9, 4, 70, 3]


def leaves(tree) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if t is not None]


def random_state(module, lengths, width, dtype):
    """Per-document states as an earlier call leaves them: run each document's own random prefix."""
    gen = torch.Generator().manual_seed(5)
    prefixes = [torch.randn(1, 3 + d, width, generator=gen, dtype=dtype) for d in range(len(lengths))]
    with torch.no_grad():
        return cat_rows([module(prefix)[1] for prefix in prefixes])


def packed_and_alone(module, x, lengths, state):
    """(packed outputs and state, the same from each document alone), each with gradients of one loss
    on outputs and states with respect to x and every parameter."""
    params = list(module.parameters())
    results = []
    for packed in (True, False):
        if packed:
            y, final = module(x, state, cu_seqlens_of(lengths))
        else:
            pieces = [module(x[:, a:b], select_rows(state, d)) for d, (a, b) in enumerate(document_spans(lengths))]
            y, final = torch.cat([p[0] for p in pieces], dim=1), cat_rows([p[1] for p in pieces])
        loss = (y * torch.cos(y)).sum() + sum((0.5 + j) * t.sin().sum() for j, t in enumerate(leaves(final)))
        results.append((y, final, torch.autograd.grad(loss, [x, *params])))
    return results


def assert_same(packed, alone, rtol):
    (y, final, grads), (y_ref, final_ref, grads_ref) = packed, alone
    assert_close(y, y_ref, rtol, "output")
    assert len(leaves(final)) == len(leaves(final_ref))
    for j, (a, b) in enumerate(zip(leaves(final), leaves(final_ref))):
        assert a.shape == b.shape and a.shape[0] == len(LENGTHS)
        if b.numel():  # (the state of a kernel-1 conv is empty)
            assert_close(a, b, rtol, f"state tensor {j}")
    for j, (a, b) in enumerate(zip(grads, grads_ref)):
        assert_close(a, b, rtol, f"gradient {j}", atol=rtol * 1e-3 * max(g.abs().max().item() for g in grads_ref))


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-states", "given-states"])
def test_conv_packed_equals_each_document_alone(K, with_state):
    torch.manual_seed(0)
    conv = CausalConv1d(6, K).double()
    x = torch.randn(1, sum(LENGTHS), 6, dtype=torch.float64, requires_grad=True)
    state = random_state(conv, LENGTHS, 6, torch.float64) if with_state else None
    assert_same(*packed_and_alone(conv, x, LENGTHS, state), 1e-12)


def test_conv_packed_outputs_see_only_their_own_document():
    conv = CausalConv1d(3, 4)
    x = torch.randn(1, 10, 3)
    y, _ = conv(x, cu_seqlens=cu_seqlens_of([2, 8]))
    changed = x.clone()
    changed[:, :2] += 5.0  # the first document only
    y2, _ = conv(changed, cu_seqlens=cu_seqlens_of([2, 8]))
    assert torch.equal(y[:, 2:], y2[:, 2:])


@pytest.mark.parametrize("name", LAYERS)
def test_layer_packed_equals_each_document_alone(name):
    torch.manual_seed(0)
    layer = randomize_(LAYERS[name][0]().double(), std=0.2)
    x = torch.randn(1, sum(LENGTHS), 16, dtype=torch.float64, requires_grad=True)
    assert_same(*packed_and_alone(layer, x, LENGTHS, None), 1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("with_state", [False, True], ids=["empty-states", "given-states"])
def test_block_packed_equals_each_document_alone(name, dtype, tol, with_state):
    torch.manual_seed(0)
    block = randomize_(BLOCKS[name](), std=0.2).to(dtype)
    x = torch.randn(1, sum(LENGTHS), 16, dtype=dtype, requires_grad=True)
    state = random_state(block, LENGTHS, 16, dtype) if with_state else None
    assert_same(*packed_and_alone(block, x, LENGTHS, state), tol)


def test_packed_layer_errors_name_cu_seqlens():
    layer = LAYERS["mlstm"][0]()
    with pytest.raises(ValueError, match="cu_seqlens needs the documents packed into one row"):
        layer(torch.randn(2, 5, 16), cu_seqlens=cu_seqlens_of([2, 3]))
    with pytest.raises(ValueError, match="cu_seqlens must end at the sequence length S=5"):
        layer(torch.randn(1, 5, 16), cu_seqlens=cu_seqlens_of([2, 4]))
