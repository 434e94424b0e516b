"""The one-token step paths of the blocks (nn/decode.py) against their sequence paths, and the
caches of derived weights they keep (rebuilt whenever a parameter changes)."""

import copy

import pytest
import torch

from tests.helpers import assert_close
from xlstm_torch.models import XLSTMConfig, XLSTMLanguageModel, XLSTMLargeConfig, XLSTMLargeLanguageModel
from xlstm_torch.nn import LargeMLSTMBlock, MLSTMBlock, SLSTMBlock, decode

D, S = 32, 7


def randomize_(module: torch.nn.Module, seed: int = 1, std: float = 0.3) -> torch.nn.Module:
    """Non-trivial values everywhere (the paper init zeros the gate weights and the sLSTM R)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return module


BLOCKS = {
    "mlstm": lambda: MLSTMBlock(D, num_heads=4, num_blocks=2),
    "slstm": lambda: SLSTMBlock(D, num_heads=4, num_blocks=2),
    "slstm-noconv": lambda: SLSTMBlock(D, num_heads=2, conv_kernel_size=0),
    "large": lambda: LargeMLSTMBlock(D, num_heads=4, num_blocks=2),
    "large-bias": lambda: LargeMLSTMBlock(D, num_heads=2, bias=True),
}
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def make_block(kind: str, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_(BLOCKS[kind]()).to(dtype).eval()


def sequence_path(block, x, state=None):
    """The block's sequence path (gradients enabled, so the step path is not taken)."""
    with torch.enable_grad():
        y, state = block(x, state)
    return y.detach(), torch.utils._pytree.tree_map(lambda t: None if t is None else t.detach(), state)


def decode_tokens(block, x, state=None):
    """x (B, S, D) one token at a time without gradients: the step path."""
    ys = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, state = block(x[:, t : t + 1], state)
            ys.append(y)
    return torch.cat(ys, dim=1), state


def assert_states_close(actual, expected, rtol, name="state"):
    leaves_a, leaves_e = torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)
    assert len(leaves_a) == len(leaves_e)
    for j, (a, e) in enumerate(zip(leaves_a, leaves_e)):
        if a is None or e is None:  # no conv buffer
            assert a is None and e is None, f"{name}[{j}]"
        else:
            assert_close(a, e, rtol, f"{name}[{j}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_step_path_equals_sequence_path(kind, dtype):
    block = make_block(kind, dtype)
    x = torch.randn(2, S, D, dtype=dtype)
    calls = []
    step = block.step
    block.step = lambda *a: calls.append(1) or step(*a)  # the step path must be the one taken
    y_steps, st_steps = decode_tokens(block, x)
    assert len(calls) == S
    y_seq, st_seq = sequence_path(block, x)
    assert_close(y_steps, y_seq, RTOL[dtype], "y")
    assert_states_close(st_steps, st_seq, RTOL[dtype])
    # each step alone equals the sequence path on that token, from the same state
    _, state = sequence_path(block, x[:, :3])
    with torch.no_grad():
        y_one, st_one = block(x[:, 3:4], state)
    y_ref, st_ref = sequence_path(block, x[:, 3:4], state)
    assert_close(y_one, y_ref, RTOL[dtype], "y one step")
    assert_states_close(st_one, st_ref, RTOL[dtype])


@pytest.mark.parametrize("kind", ["mlstm", "slstm", "large"])
def test_step_path_not_taken_in_training_mode_or_with_gradients(kind):
    block = make_block(kind)
    calls = []
    step = block.step
    block.step = lambda *a: calls.append(1) or step(*a)
    x = torch.randn(1, 1, D)
    block(x)  # parameters need gradients
    with torch.no_grad():
        block.train()(x)  # dropout would apply
    assert calls == []


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_cached_weights_follow_parameter_changes(kind):
    """In-place updates, load_state_dict, a dtype change and deepcopy: the step path never uses stale weights."""
    block, other = make_block(kind), randomize_(BLOCKS[kind](), seed=2).eval()
    x = torch.randn(1, 1, D)
    decode_tokens(block, x)  # builds the caches
    with torch.no_grad():
        for p in block.parameters():
            p.mul_(0.5).add_(0.01)  # an optimiser-like in-place update
    assert_close(decode_tokens(block, x)[0], sequence_path(block, x)[0], 1e-5, "after in-place update")
    block.load_state_dict(other.state_dict())
    assert_close(decode_tokens(block, x)[0], sequence_path(other, x)[0], 1e-5, "after load_state_dict")
    twin = copy.deepcopy(block)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.05)
    decode_tokens(twin, x)
    assert_close(decode_tokens(block, x)[0], sequence_path(other, x)[0], 1e-5, "original after changing a copy")
    assert_close(decode_tokens(twin, x)[0], sequence_path(twin, x)[0], 1e-5, "copy")
    block.double()
    y, _ = decode_tokens(block, x.double())
    assert y.dtype == torch.float64
    assert_close(y, sequence_path(block, x.double())[0], 1e-12, "after .double()")


def test_fusion_off_above_the_size_limit(monkeypatch):
    block = make_block("large-bias")
    x = torch.randn(2, S, D)
    fused, _ = decode_tokens(block, x)
    monkeypatch.setattr(decode, "FUSE_MAX_BYTES", 0)
    assert block.mlstm_layer.fused_in.get([block.mlstm_layer.q]) is None
    separate, _ = decode_tokens(block, x)
    assert_close(separate, fused, 1e-5, "unfused")
    assert_close(separate, sequence_path(block, x)[0], 1e-5, "unfused vs sequence path")


def test_inference_tensor_parameters():
    """Parameters made under inference_mode have no version counter: nothing is cached, results still right."""
    with torch.inference_mode():
        block = make_block("large")
        x = torch.randn(1, 3, D)
        y_steps, _ = decode_tokens(block, x)
        y_seq, _ = block(x)
    assert_close(y_steps, y_seq, 1e-5, "y")
    assert block.mlstm_layer.fused_in._key is None


def test_weight_cache_rebuilds_only_on_change():
    p = torch.nn.Parameter(torch.randn(3, 2))
    cache, builds = decode.WeightCache(), []

    def build():
        builds.append(1)
        return p * 2

    first = cache.get([p], build)
    assert cache.get([p], build) is first and len(builds) == 1
    with torch.no_grad():
        p.add_(1)
    assert torch.equal(cache.get([p], build), p.detach() * 2) and len(builds) == 2
    q = torch.nn.Parameter(p.detach().clone())
    cache.get([q], build)  # another tensor, even with equal values
    assert len(builds) == 3
    cache.clear()
    cache.get([q], build)
    assert len(builds) == 4


@pytest.mark.parametrize("model", ["xlstm", "xlstm-large"])
def test_model_decoding_equals_full_forward(model):
    """Prefill, then token by token under no_grad (the step paths): the logits of one full call."""
    torch.manual_seed(0)
    if model == "xlstm":
        net = XLSTMLanguageModel(XLSTMConfig(vocab_size=50, embedding_dim=D, num_blocks=4, num_heads=4, slstm_at="1:1"))
    else:
        net = XLSTMLargeLanguageModel(XLSTMLargeConfig(vocab_size=50, embedding_dim=D, num_blocks=3, num_heads=4))
    net = randomize_(net, std=0.2).eval()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        full, full_state = net(ids)
        logits, state = net(ids[:, :5])
        steps = [logits]
        for t in range(5, 12):
            logits, state = net(ids[:, t : t + 1], state)
            steps.append(logits)
    assert_close(torch.cat(steps, dim=1), full, 1e-5, "logits")
    assert_states_close(state.blocks, full_state.blocks, 1e-5)


class ShiftedLinear(torch.nn.Linear):
    """A projection with a forward of its own (like an adapter or a quantised layer)."""

    def forward(self, x):
        return super().forward(x) + 0.5


@pytest.mark.parametrize("kind", ["mlstm", "large", "slstm"])
def test_projections_with_their_own_forward_run_as_themselves(kind):
    block = make_block(kind)
    layer = block.slstm_layer if kind == "slstm" else block.mlstm_layer
    names = ["proj_up", "proj_down"] if kind == "mlstm" else ["q", "out_proj"] if kind == "large" else []
    for name in names:
        old = getattr(layer, name)
        new = ShiftedLinear(old.in_features, old.out_features, bias=old.bias is not None)
        new.load_state_dict(old.state_dict())
        setattr(layer, name, new)
    if hasattr(block, "ffn"):
        old = block.ffn.proj_up
        block.ffn.proj_up = ShiftedLinear(old.in_features, old.out_features, bias=old.bias is not None)
        block.ffn.proj_up.load_state_dict(old.state_dict())
    block.eval()
    x = torch.randn(2, S, D)
    y_steps, st_steps = decode_tokens(block, x)
    y_seq, st_seq = sequence_path(block, x)
    assert_close(y_steps, y_seq, 1e-5, "y")
    assert_states_close(st_steps, st_seq, 1e-5)


def test_cached_weights_are_not_pickled():
    """A pickled (or copied) module carries no derived tensors; they are rebuilt from its own weights."""
    import pickle

    block = make_block("large")
    x = torch.randn(1, 3, D)
    expected, _ = decode_tokens(block, x)
    assert block.mlstm_layer.fused_in._value is not None
    twin = pickle.loads(pickle.dumps(block))
    assert twin.mlstm_layer.fused_in._value is None
    assert_close(decode_tokens(twin, x)[0], expected, 1e-6, "unpickled")


def _traced_ops(fn, *args) -> set:
    """The aten-level calls of ``fn``'s graph as torch.compile traces it (no code generated): which form
    ``row_linear`` took."""
    ops = set()

    def record(gm, example_inputs):
        ops.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=record, fullgraph=True)(*args)
    return ops


@pytest.mark.parametrize("rows", [1, 2, 4, 5])
def test_row_linear_takes_the_reduction_form_for_few_rows_when_compiled(rows):
    gen = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=gen) for shape in ((rows, 1, 24), (40, 24), (40,)))
    ops = _traced_ops(decode.row_linear, x, weight, bias)
    linear_called = any("linear" in op for op in ops)
    assert linear_called == (rows > decode.ROW_PRODUCT_MAX_ROWS), ops
    # Eagerly always the library product (bit-equal to F.linear).
    assert torch.equal(decode.row_linear(x, weight, bias), torch.nn.functional.linear(x, weight, bias))


@pytest.mark.parametrize("bias", [False, True])
def test_row_linear_compiled_equals_linear(bias):
    """What inductor makes of the reduction form: F.linear up to the summation order, with and without a
    bias, on (rows, I) and (rows, 1, I) inputs and odd sizes."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(37, 53, generator=gen)
    b = torch.randn(37, generator=gen) if bias else None
    compiled = torch.compile(decode.row_linear, fullgraph=True)
    for shape in ((1, 53), (3, 1, 53), (4, 53)):
        x = torch.randn(*shape, generator=gen)
        assert_close(compiled(x, weight, b), torch.nn.functional.linear(x, weight, b), RTOL[torch.float32],
                     f"rows {shape}")


@pytest.mark.parametrize("activation, row_form", [("gelu", False), ("silu", True)])
def test_feedforward_step_keeps_an_exact_gelu_out_of_the_reduction(activation, row_form):
    """Inductor would recompute an exact GELU once per output of the down projection inside the reduction
    (row_linear's docstring): with GELU the down projection stays a library product."""
    from xlstm_torch.nn.feedforward import GatedFeedForward

    ffn = GatedFeedForward(D, 1.5, activation).eval()
    x = torch.randn(1, D)
    with torch.no_grad():
        ops = _traced_ops(ffn.step, x)
    assert any("linear" in op for op in ops) == (not row_form), ops
