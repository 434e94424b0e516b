"""The Transformer baseline: config checks, a written-out float64 reference, the KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import assert_close
from xlstm_torch.models.base import MODEL_REGISTRY
from xlstm_torch.models.transformer import (
    Transformer,
    TransformerConfig,
    TransformerState,
    apply_rope,
    rope_angles,
)


def make_model(dtype=torch.float32, seed=0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig.debug(**overrides)).to(dtype).eval()


# --- config ---------------------------------------------------------------------------------------------------


def test_config_round_trip_and_derived_sizes():
    config = TransformerConfig.debug(d_model=96, num_heads=3)
    assert TransformerConfig.from_dict(config.to_dict()) == config
    assert config.head_dim == 32
    assert config.ffn_hidden_dim == 256  # 8/3 * 96 = 256, already a multiple of 64
    assert TransformerConfig.debug(ffn_dim=100).ffn_hidden_dim == 100
    with pytest.raises(Exception):
        config.d_model = 8  # frozen


@pytest.mark.parametrize("overrides, field", [
    (dict(d_model=0), "d_model"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(num_blocks=2.0), "num_blocks"),
    (dict(num_heads=3), "num_heads"),  # 64 not divisible by 3
    (dict(d_model=12, num_heads=4), "d_model / num_heads"),  # odd head dim
    (dict(ffn_dim=0), "ffn_dim"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(rope_base=-1.0), "rope_base"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        TransformerConfig.debug(**overrides)


def test_from_dict_rejects_misspelt_keys_with_a_hint():
    data = TransformerConfig.debug().to_dict()
    data["vocab_sise"] = data.pop("vocab_size")
    with pytest.raises(ValueError, match=r"'vocab_sise' \(did you mean 'vocab_size'\?\)"):
        TransformerConfig.from_dict(data)


def test_registered_under_its_model_type():
    assert MODEL_REGISTRY["transformer"] is Transformer


# --- the forward pass against a written-out reference ---------------------------------------------------------------


def reference_logits(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The Llama-style forward written plainly in float64 with the model's weights: explicit causal
    softmax, RoPE by complex rotation of channel pairs (j, j + DH/2), RMSNorm and SwiGLU."""
    c = model.config
    w = {n: p.detach().double() for n, p in model.named_parameters()}

    def rms(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * weight

    def rotate(x):  # x (S, NH, DH); position of row s is s
        S, half = x.shape[0], c.head_dim // 2
        pos = torch.arange(S, dtype=torch.float64)[:, None]
        freq = c.rope_base ** (-torch.arange(half, dtype=torch.float64) * 2 / c.head_dim)
        z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones(S, half, dtype=torch.float64),
                                                                       pos * freq)[:, None, :]
        return torch.cat((z.real, z.imag), dim=-1)

    out = []
    for row in ids:
        x = w["embedding.weight"][row]  # (S, D)
        S = x.shape[0]
        for b in range(c.num_blocks):
            p = f"blocks.{b}."
            h = rms(x, w[p + "attn_norm.weight"])
            q, k, v = (h @ w[p + f"attn.{n}_proj.weight"].T for n in "qkv")
            q, k, v = (t.view(S, c.num_heads, c.head_dim) for t in (q, k, v))
            q, k = rotate(q), rotate(k)
            scores = torch.einsum("snd,tnd->nst", q, k) / math.sqrt(c.head_dim)
            scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
            attn = torch.einsum("nst,tnd->snd", scores.softmax(-1), v).reshape(S, c.d_model)
            x = x + attn @ w[p + "attn.out_proj.weight"].T
            h = rms(x, w[p + "ffn_norm.weight"])
            gate, up = h @ w[p + "ffn.gate_proj.weight"].T, h @ w[p + "ffn.up_proj.weight"].T
            x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "ffn.down_proj.weight"].T
        out.append(rms(x, w["out_norm.weight"]) @ w["lm_head.weight"].T)
    return torch.stack(out)


def test_matches_written_out_reference_float64():
    model = make_model(torch.float64)
    ids = torch.randint(0, 256, (2, 11))
    logits, state = model(ids)
    assert logits.shape == (2, 11, 256) and logits.dtype == torch.float64
    assert_close(logits, reference_logits(model, ids), rtol=1e-12, name="logits")
    assert isinstance(state, TransformerState) and state.seq_len == 11


def test_causal_future_tokens_do_not_change_past_logits():
    model = make_model()
    ids = torch.randint(0, 256, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(m, n):
        cq, sq = rope_angles(torch.tensor([m]), 16, 10000.0)
        ck, sk = rope_angles(torch.tensor([n]), 16, 10000.0)
        return (apply_rope(q, cq.double(), sq.double()) * apply_rope(k, ck.double(), sk.double())).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(score(7, 3), score(7, 5))


# --- the key/value cache ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("splits", [[13], [5, 1, 7], [1] * 13, [12, 1], [4, 4, 5]],
                         ids=lambda s: "+".join(map(str, s)))
def test_pieces_with_cache_equal_one_call(splits):
    model = make_model()
    ids = torch.randint(0, 256, (3, 13))
    with torch.no_grad():
        whole, _ = model(ids)
        state, pieces, start = None, [], 0
        for size in splits:
            logits, state = model(ids[:, start:start + size], state)
            pieces.append(logits)
            start += size
    assert state.seq_len == 13
    assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, name="logits in pieces")


def test_pieces_float64_tight():
    model = make_model(torch.float64)
    ids = torch.randint(0, 256, (2, 9))
    whole, _ = model(ids)
    first, state = model(ids[:, :4])
    rest, _ = model(ids[:, 4:], state)
    assert_close(torch.cat((first, rest), 1), whole, rtol=1e-12, name="logits in pieces")


def test_tied_embeddings_share_one_parameter():
    model = make_model(tie_embeddings=True)
    assert model.lm_head.weight is model.embedding.weight
    n_untied = sum(p.numel() for p in make_model().parameters())
    assert sum(p.numel() for p in model.parameters()) == n_untied - 256 * 64


def test_state_to_and_detach():
    model = make_model()
    _, state = model(torch.randint(0, 256, (1, 5)))
    assert state.blocks[0].keys.requires_grad
    detached = state.detach()
    assert not any(c.keys.requires_grad or c.values.requires_grad for c in detached.blocks)
    moved = state.to("cpu")
    assert moved.seq_len == 5 and len(moved.blocks) == 2


def test_gradients_flow_to_every_parameter():
    model = make_model().train()
    logits, _ = model(torch.randint(0, 256, (2, 6)))
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("bad, exc, match", [
    (torch.zeros(2, 3), TypeError, "input_ids"),
    (torch.zeros(3, dtype=torch.long), ValueError, "input_ids"),
    (torch.zeros(2, 0, dtype=torch.long), ValueError, "input_ids"),
])
def test_bad_input_ids(bad, exc, match):
    with pytest.raises(exc, match=match):
        make_model()(bad)


def test_bad_state():
    model = make_model()
    _, state = model(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(1, 1, dtype=torch.long), state)
    with pytest.raises(ValueError, match="state"):
        model(torch.zeros(2, 1, dtype=torch.long), state=(1, 2))
