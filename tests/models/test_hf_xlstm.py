"""Loading the Hugging Face transformers xLSTM (xLSTM 7B) layout: name table, config, logits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import assert_close
from xlstm_torch.checkpoint import load_pretrained
from xlstm_torch.models.config import XLSTMLargeConfig
from xlstm_torch.models.hf_xlstm import config_from_hf, tensor_table

# config.json exactly as transformers 5.24 writes it for xLSTMForCausalLM (save_pretrained), with small sizes:
# D 128 (q/k 64 = 2 heads x 32, v 128 = 2 heads x 64), 2 blocks, vocab 96, FFN round_up(128 * 2.667, 64) = 384.
HF_CONFIG = {
    "add_out_norm": True, "architectures": ["xLSTMForCausalLM"], "autocast_kernel_dtype": "float32",
    "bos_token_id": 0, "chunk_size": 16, "chunkwise_kernel": "chunkwise--native_autograd", "dtype": "float32",
    "embedding_dim": 128, "eos_token_id": 2, "eps": 1e-06, "ffn_proj_factor": 2.667, "ffn_round_up_to_multiple_of": 64,
    "gate_soft_cap": 15.0, "hidden_size": 128, "inference_state_dtype": "float32", "max_inference_chunksize": 16384,
    "mode": "inference", "model_type": "xlstm", "norm_eps": 1e-06, "norm_reduction_force_float32": True,
    "num_blocks": 2, "num_heads": 2, "num_hidden_layers": 2, "output_logit_soft_cap": 30.0, "pad_token_id": 1,
    "qk_dim_factor": 0.5, "return_last_states": True, "sequence_kernel": "native_sequence__native",
    "step_kernel": "native", "tie_word_embeddings": False, "transformers_version": "5.24.0", "use_bias": False,
    "use_cache": True, "v_dim_factor": 1.0, "vocab_size": 96, "weight_mode": "single",
}
D, NH, V, L, QK, DV, F = 128, 2, 96, 2, 64, 128, 384


def hf_single_shapes() -> dict[str, tuple]:
    """The state dict of transformers' xLSTMForCausalLM (weight_mode "single"), from modeling_xlstm.py."""
    shapes = {"backbone.embeddings.weight": (V, D)}
    for j in range(L):
        p = f"backbone.blocks.{j}."
        shapes.update({
            p + "norm_mlstm.weight": (D,),
            p + "mlstm_layer.q.weight": (QK, D), p + "mlstm_layer.k.weight": (QK, D),
            p + "mlstm_layer.v.weight": (DV, D), p + "mlstm_layer.ogate_preact.weight": (DV, D),
            p + "mlstm_layer.igate_preact.weight": (NH, D), p + "mlstm_layer.igate_preact.bias": (NH,),
            p + "mlstm_layer.fgate_preact.weight": (NH, D), p + "mlstm_layer.fgate_preact.bias": (NH,),
            p + "mlstm_layer.multihead_norm.weight": (DV,), p + "mlstm_layer.out_proj.weight": (D, DV),
            p + "norm_ffn.weight": (D,),
            p + "ffn.proj_up_gate.weight": (F, D), p + "ffn.proj_up.weight": (F, D), p + "ffn.proj_down.weight": (D, F),
        })
    shapes.update({"backbone.out_norm.weight": (D,), "lm_head.weight": (V, D)})
    return shapes


def random_hf_tensors(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in hf_single_shapes().items():
        if name.endswith("norm.weight") or "norm_" in name:
            t = 1 + 0.2 * torch.randn(shape, generator=g)
        elif name.endswith("igate_preact.bias"):
            t = -2 + torch.randn(shape, generator=g)
        elif name.endswith("fgate_preact.bias"):
            t = 2 + torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[-1])
        tensors[name] = t
    return tensors


def fuse(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in weight_mode "fused": q|k|v|o, i|f and gate|up stacked by rows."""
    fused = dict(tensors)
    for j in range(L):
        p = f"backbone.blocks.{j}."
        m = p + "mlstm_layer."
        fused[m + "qkv_opreact.weight"] = torch.cat([fused.pop(m + n + ".weight") for n in ("q", "k", "v", "ogate_preact")])
        for kind in ("weight", "bias"):
            fused[m + f"ifgate_preact.{kind}"] = torch.cat([fused.pop(m + f"{g}gate_preact.{kind}") for g in "if"])
        fused[p + "ffn.proj_up_gate_z.weight"] = torch.cat([fused.pop(p + "ffn.proj_up_gate.weight"),
                                                            fused.pop(p + "ffn.proj_up.weight")])
    return fused


def write_hf_checkpoint(path, tensors, config=HF_CONFIG, shards=1):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}))
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    names = list(tensors)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({n: tensors[n] for n in part}, str(path / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0},
                                                                   "weight_map": weight_map}))
    return path


def reference_logits(tensors, ids) -> torch.Tensor:
    """transformers' xLSTMForCausalLM forward written plainly in float64 from its source; the mLSTM by
    its definition (MATH.md), without stabiliser or epsilon."""
    t = {n: x.double() for n, x in tensors.items()}
    eps = HF_CONFIG["norm_eps"]
    B, S = ids.shape
    DK, DVH = QK // NH, DV // NH

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def cap(x, c):
        return c * torch.tanh(x / c)

    x = t["backbone.embeddings.weight"][ids]  # (B, S, D)
    for j in range(L):
        p = f"backbone.blocks.{j}."
        m = p + "mlstm_layer."
        h = rms(x, t[p + "norm_mlstm.weight"])
        q = (h @ t[m + "q.weight"].T).view(B, S, NH, DK)
        k = (h @ t[m + "k.weight"].T).view(B, S, NH, DK) / math.sqrt(DK)
        v = (h @ t[m + "v.weight"].T).view(B, S, NH, DVH)
        o = torch.sigmoid(h @ t[m + "ogate_preact.weight"].T)
        i = cap(h @ t[m + "igate_preact.weight"].T + t[m + "igate_preact.bias"], 15.0)  # (B, S, NH)
        f = cap(h @ t[m + "fgate_preact.weight"].T + t[m + "fgate_preact.bias"], 15.0)
        C = torch.zeros(B, NH, DK, DVH, dtype=torch.float64)
        n = torch.zeros(B, NH, DK, dtype=torch.float64)
        outs = []
        for s in range(S):
            ig, fg = i[:, s].exp(), torch.sigmoid(f[:, s])  # (B, NH)
            C = fg[..., None, None] * C + ig[..., None, None] * k[:, s, :, :, None] * v[:, s, :, None, :]
            n = fg[..., None] * n + ig[..., None] * k[:, s]
            num = torch.einsum("bhd,bhde->bhe", q[:, s], C)
            den = torch.einsum("bhd,bhd->bh", q[:, s], n).abs().clamp(min=1.0)
            outs.append(num / den[..., None])
        hh = torch.stack(outs, 1)  # (B, S, NH, DVH)
        hh = (hh - hh.mean(-1, keepdim=True)) / torch.sqrt(hh.var(-1, unbiased=False, keepdim=True) + eps)
        hh = hh.reshape(B, S, DV) * t[m + "multihead_norm.weight"]
        x = x + (o * hh) @ t[m + "out_proj.weight"].T
        h = rms(x, t[p + "norm_ffn.weight"])
        gate, up = h @ t[p + "ffn.proj_up_gate.weight"].T, h @ t[p + "ffn.proj_up.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ t[p + "ffn.proj_down.weight"].T
    return cap(rms(x, t["backbone.out_norm.weight"]) @ t["lm_head.weight"].T, 30.0)


# --- the table and the config -------------------------------------------------------------------------------------


def test_config_translation():
    config = config_from_hf(HF_CONFIG)
    assert config == XLSTMLargeConfig(vocab_size=V, embedding_dim=D, num_blocks=L, num_heads=NH, qk_dim_factor=0.5,
                                      v_dim_factor=1.0, ffn_proj_factor=2.667, round_up_to_multiple_of=64,
                                      gate_soft_cap=15.0, output_logit_soft_cap=30.0, chunk_size=16, norm_eps=1e-6)
    assert (config.qk_dim, config.v_dim, config.ffn_dim) == (QK, DV, F)


def test_the_7b_config_translates_to_the_7b_sizes():
    config = config_from_hf({"architectures": ["xLSTMForCausalLM"], "model_type": "xlstm"})  # all HF defaults
    assert (config.embedding_dim, config.num_blocks, config.num_heads, config.vocab_size) == (4096, 32, 8, 50304)
    assert (config.qk_head_dim, config.v_head_dim, config.ffn_dim) == (256, 512, 10944)


@pytest.mark.parametrize("weight_mode", ["single", "fused"])
def test_table_covers_the_hf_state_dict(weight_mode):
    expected = hf_single_shapes() if weight_mode == "single" else {
        n: tuple(t.shape) for n, t in fuse(random_hf_tensors()).items()}
    table = tensor_table({**HF_CONFIG, "weight_mode": weight_mode})
    assert {r.hf_name: r.hf_shape for r in table} == expected
    ours = {name: shape for r in table for name, shape in r.parts}
    from xlstm_torch.models.large import XLSTMLargeLanguageModel

    with torch.device("meta"):
        model = XLSTMLargeLanguageModel(config_from_hf(HF_CONFIG))
    assert ours == {n: tuple(t.shape) for n, t in model.state_dict().items()}
    for rule in table:  # a split covers its tensor's rows exactly
        assert sum(shape[0] for _, shape in rule.parts) == rule.hf_shape[0]


def test_table_matches_transformers_when_installed():
    transformers = pytest.importorskip("transformers")
    config = transformers.xLSTMConfig(**{k: v for k, v in HF_CONFIG.items()
                                         if k not in ("architectures", "transformers_version", "model_type")})
    # (weight_mode "fused" cannot be built there: transformers 5.24's init of the fused gate bias fails)
    model = transformers.xLSTMForCausalLM(config)
    table = tensor_table(HF_CONFIG)
    assert {r.hf_name: r.hf_shape for r in table} == {n: tuple(t.shape) for n, t in model.state_dict().items()}


@pytest.mark.parametrize("change, match", [
    (dict(use_bias=True), "use_bias"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings"),
    (dict(add_out_norm=False), "add_out_norm"),
    (dict(eps=1e-4), "eps"),
    (dict(weight_mode="packed"), "weight_mode"),
    (dict(gate_soft_cap=None), "gate_soft_cap"),
    (dict(gate_soft_caps=15.0), "did you mean 'gate_soft_cap'"),
    (dict(model_type="mamba"), "model_type"),
    (dict(num_heads=3), "num_heads"),
])
def test_unsupported_or_misspelt_config(change, match):
    with pytest.raises(ValueError, match=match):
        config_from_hf({**HF_CONFIG, **change})


# --- loading --------------------------------------------------------------------------------------------------------


def test_load_hf_layout_matches_the_reference_forward(tmp_path):
    tensors = random_hf_tensors()
    model = load_pretrained(write_hf_checkpoint(tmp_path / "hf", tensors), dtype=torch.float64)
    assert model.model_type == "xlstm-large"
    ids = torch.randint(0, V, (2, 21))  # not a multiple of chunk_size 16
    with torch.no_grad():
        logits, _ = model(ids)
    # the model adds eps = 1e-6 to the normaliser of the stabilised cell, the reference has none
    assert_close(logits, reference_logits(tensors, ids), rtol=1e-6, name="logits")


@pytest.mark.parametrize("shards", [1, 3])
def test_fused_and_sharded_layouts_load_the_same_model(tmp_path, shards):
    tensors = random_hf_tensors()
    single = load_pretrained(write_hf_checkpoint(tmp_path / "single", tensors))
    fused = load_pretrained(write_hf_checkpoint(tmp_path / "fused", fuse(tensors),
                                                {**HF_CONFIG, "weight_mode": "fused"}, shards=shards))
    for (name, a), (_, b) in zip(single.state_dict().items(), fused.state_dict().items()):
        assert torch.equal(a, b), name


def test_matches_transformers_logits_when_installed(tmp_path):
    transformers = pytest.importorskip("transformers")
    tensors = random_hf_tensors()
    config = transformers.xLSTMConfig(**{k: v for k, v in HF_CONFIG.items()
                                         if k not in ("architectures", "transformers_version", "model_type")})
    hf_model = transformers.xLSTMForCausalLM(config).eval()
    hf_model.load_state_dict(tensors)
    ours = load_pretrained(write_hf_checkpoint(tmp_path / "hf", tensors))
    ids = torch.randint(0, V, (2, 21))
    with torch.no_grad():
        expected = hf_model(ids, use_cache=False).logits
        logits, _ = ours(ids)
    assert_close(logits, expected, rtol=2e-5, name="logits vs transformers")  # float32, other kernels


def test_missing_and_misshaped_tensors_name_the_hf_tensor(tmp_path):
    tensors = random_hf_tensors()
    del tensors["backbone.blocks.1.mlstm_layer.q.weight"]
    tensors["backbone.blocks.0.ffn.proj_down.weight"] = torch.zeros(D, F + 1)
    tensors["backbone.blocks.0.mlstm_layer.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError) as err:
        load_pretrained(write_hf_checkpoint(tmp_path / "hf", tensors))
    message = str(err.value)
    assert "blocks.1.mlstm_layer.q.weight (stored as backbone.blocks.1.mlstm_layer.q.weight)" in message
    assert f"blocks.0.ffn.proj_down.weight: stored ({D}, {F + 1}), model wants ({D}, {F})" in message
    assert "unexpected tensors: ['backbone.blocks.0.mlstm_layer.extra.weight']" in message


def test_fused_tensor_of_the_wrong_size(tmp_path):
    tensors = fuse(random_hf_tensors())
    tensors["backbone.blocks.0.mlstm_layer.qkv_opreact.weight"] = torch.zeros(2 * QK + 2 * DV - 1, D)
    with pytest.raises(ValueError, match="unexpected tensors: \\['backbone.blocks.0.mlstm_layer.qkv_opreact.weight'\\]"):
        load_pretrained(write_hf_checkpoint(tmp_path / "hf", tensors, {**HF_CONFIG, "weight_mode": "fused"}))
