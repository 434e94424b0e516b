"""Reading the public xLSTM 7B checkpoint layout of Hugging Face ``transformers`` into our large model.

xLSTM 7B (Beck et al., 2025) is published in the layout of ``transformers``' ``xLSTMForCausalLM``:
a config.json of ``xLSTMConfig`` fields (model_type "xlstm") and safetensors weights named

    backbone.embeddings.weight                                   (V, D)
    backbone.blocks.{j}.norm_mlstm.weight                        (D,)
    backbone.blocks.{j}.mlstm_layer.{q,k}.weight                 (D_qk, D)
    backbone.blocks.{j}.mlstm_layer.{v,ogate_preact}.weight      (D_v, D)
    backbone.blocks.{j}.mlstm_layer.{igate,fgate}_preact.weight  (NH, D)   and .bias (NH,)
    backbone.blocks.{j}.mlstm_layer.multihead_norm.weight        (D_v,)
    backbone.blocks.{j}.mlstm_layer.out_proj.weight              (D, D_v)
    backbone.blocks.{j}.norm_ffn.weight                          (D,)
    backbone.blocks.{j}.ffn.{proj_up_gate,proj_up}.weight        (F, D)
    backbone.blocks.{j}.ffn.proj_down.weight                     (D, F)
    backbone.out_norm.weight                                     (D,)
    lm_head.weight                                               (V, D)

with D_qk = int(D * qk_dim_factor), D_v = int(D * v_dim_factor), F = D * ffn_proj_factor rounded up
to ffn_round_up_to_multiple_of. With ``weight_mode: "fused"`` the four projections q, k, v, o are
one matrix ``mlstm_layer.qkv_opreact`` (rows in that order), the two gates one ``ifgate_preact``
(i rows first) and the FFN's gate and up projections one ``ffn.proj_up_gate_z`` (gate rows first).

``XLSTMLargeLanguageModel`` (model_type "xlstm-large") uses the same block-level names without the
``backbone.`` prefix and with ``embedding`` for ``embeddings``; this module holds that table, the
splits of the fused matrices and the translation of the config. The library never imports
``transformers``: the names, shapes and defaults here were read from its ``modeling_xlstm.py`` and
``configuration_xlstm.py`` (transformers 5.x).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from xlstm_torch.models.config import XLSTMLargeConfig

__all__ = ["LARGE_MODEL_TYPE", "config_from_hf", "tensor_table", "HFNameMap", "TensorRule"]

LARGE_MODEL_TYPE = "xlstm-large"

# xLSTMConfig defaults (transformers' configuration_xlstm.py): a key absent from config.json has these.
HF_DEFAULTS = {
    "vocab_size": 50304, "hidden_size": 4096, "embedding_dim": None, "num_hidden_layers": 32, "num_blocks": None,
    "num_heads": 8, "use_bias": False, "norm_reduction_force_float32": True, "tie_word_embeddings": False,
    "add_out_norm": True, "norm_eps": 1e-6, "qk_dim_factor": 0.5, "v_dim_factor": 1.0,
    "chunkwise_kernel": "chunkwise--native_autograd", "sequence_kernel": "native_sequence__native",
    "step_kernel": "native", "mode": "inference", "chunk_size": 64, "return_last_states": True,
    "autocast_kernel_dtype": "bfloat16", "eps": 1e-6, "inference_state_dtype": "float32", "ffn_proj_factor": 2.667,
    "ffn_round_up_to_multiple_of": 64, "gate_soft_cap": 15.0, "output_logit_soft_cap": 30.0,
    "weight_mode": "single", "use_cache": True, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    "max_inference_chunksize": 16384,
}
# Keys that choose kernels, dtypes, caching or token ids: they do not change the function computed.
_RUNTIME_KEYS = {"chunkwise_kernel", "sequence_kernel", "step_kernel", "mode", "return_last_states",
                 "autocast_kernel_dtype", "inference_state_dtype", "max_inference_chunksize", "use_cache",
                 "pad_token_id", "bos_token_id", "eos_token_id", "norm_reduction_force_float32"}
# Our mLSTM cell's normaliser epsilon (ops default); HF's "eps" must equal it.
_CELL_EPS = 1e-6


def _hf_value(hf: dict, key: str):
    return hf.get(key, HF_DEFAULTS[key])


def config_from_hf(hf: dict) -> XLSTMLargeConfig:
    """Our ``XLSTMLargeConfig`` for an HF xLSTM config.json (a dict). Values our model cannot
    reproduce (biases, tied embeddings, no final norm, another cell epsilon) raise ValueError."""
    if not isinstance(hf, dict):
        raise TypeError(f"hf must be a dict (a parsed config.json), got {type(hf).__name__}")
    if hf.get("model_type", "xlstm") != "xlstm":
        raise ValueError(f"config.json of model_type {hf.get('model_type')!r} is not an HF xLSTM config "
                         "(expected model_type 'xlstm')")
    known = set(HF_DEFAULTS)
    for key in hf:  # a misspelt xLSTM key would silently fall back to its default: refuse it
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.85)
        if key not in known and close:
            raise ValueError(f"unknown HF xLSTM config key {key!r} (did you mean {close[0]!r}?)")
    for key, unsupported, why in [
        ("use_bias", True, "our large model has no projection or norm biases"),
        ("tie_word_embeddings", True, "our large model has an untied output head"),
        ("add_out_norm", False, "our large model always applies the final RMSNorm"),
    ]:
        if _hf_value(hf, key) == unsupported:
            raise ValueError(f"HF xLSTM config {key}={unsupported} is not supported: {why}")
    if _hf_value(hf, "eps") != _CELL_EPS:
        raise ValueError(f"HF xLSTM config eps={_hf_value(hf, 'eps')} is not supported: our mLSTM cell uses {_CELL_EPS}")
    if _hf_value(hf, "weight_mode") not in ("single", "fused"):
        raise ValueError(f"HF xLSTM config weight_mode must be 'single' or 'fused', got {hf['weight_mode']!r}")
    for key in ("gate_soft_cap", "output_logit_soft_cap"):
        if _hf_value(hf, key) is None:
            raise ValueError(f"HF xLSTM config {key}=null (no cap) is not supported")
    # HF accepts two names each for the width and the depth; take the ones its xLSTMModel builds with
    # (hidden_size for the layers, num_blocks for the number of blocks), each falling back to the other.
    width = hf.get("hidden_size") if hf.get("hidden_size") is not None else hf.get("embedding_dim")
    depth = hf.get("num_blocks") if hf.get("num_blocks") is not None else hf.get("num_hidden_layers")
    return XLSTMLargeConfig(
        vocab_size=_hf_value(hf, "vocab_size"),
        embedding_dim=HF_DEFAULTS["hidden_size"] if width is None else width,
        num_blocks=HF_DEFAULTS["num_hidden_layers"] if depth is None else depth,
        num_heads=_hf_value(hf, "num_heads"),
        qk_dim_factor=_hf_value(hf, "qk_dim_factor"),
        v_dim_factor=_hf_value(hf, "v_dim_factor"),
        ffn_proj_factor=_hf_value(hf, "ffn_proj_factor"),
        round_up_to_multiple_of=_hf_value(hf, "ffn_round_up_to_multiple_of"),
        gate_soft_cap=float(_hf_value(hf, "gate_soft_cap")),
        output_logit_soft_cap=float(_hf_value(hf, "output_logit_soft_cap")),
        chunk_size=_hf_value(hf, "chunk_size"),
        norm_eps=_hf_value(hf, "norm_eps"),
    )


@dataclass(frozen=True)
class TensorRule:
    """One stored HF tensor and the model tensors it becomes: ``parts`` are (our name, our shape),
    cut from consecutive rows (dim 0) of the HF tensor in order; one part means a plain rename."""

    hf_name: str
    hf_shape: tuple[int, ...]
    parts: tuple[tuple[str, tuple[int, ...]], ...]


def tensor_table(hf: dict) -> list[TensorRule]:
    """Every tensor of an HF xLSTM checkpoint with this config, with its name and shape on our side."""
    config = config_from_hf(hf)
    D, V, NH, F = config.embedding_dim, config.vocab_size, config.num_heads, config.ffn_dim
    QK, DV = config.qk_dim, config.v_dim
    fused = _hf_value(hf, "weight_mode") == "fused"
    rules = [TensorRule("backbone.embeddings.weight", (V, D), (("embedding.weight", (V, D)),))]
    for j in range(config.num_blocks):
        hf_block, block = f"backbone.blocks.{j}.", f"blocks.{j}."

        def same(name, shape):
            return TensorRule(hf_block + name, shape, ((block + name, shape),))

        def split(hf_name, names_and_shapes):
            rows = sum(shape[0] for _, shape in names_and_shapes)
            return TensorRule(hf_block + hf_name, (rows, *names_and_shapes[0][1][1:]),
                              tuple((block + name, shape) for name, shape in names_and_shapes))

        layer = "mlstm_layer."
        rules.append(same("norm_mlstm.weight", (D,)))
        if fused:
            rules.append(split(layer + "qkv_opreact.weight", [(layer + "q.weight", (QK, D)), (layer + "k.weight", (QK, D)),
                                                              (layer + "v.weight", (DV, D)),
                                                              (layer + "ogate_preact.weight", (DV, D))]))
            rules.append(split(layer + "ifgate_preact.weight", [(layer + "igate_preact.weight", (NH, D)),
                                                                (layer + "fgate_preact.weight", (NH, D))]))
            rules.append(split(layer + "ifgate_preact.bias", [(layer + "igate_preact.bias", (NH,)),
                                                              (layer + "fgate_preact.bias", (NH,))]))
        else:
            rules += [same(layer + "q.weight", (QK, D)), same(layer + "k.weight", (QK, D)),
                      same(layer + "v.weight", (DV, D)), same(layer + "ogate_preact.weight", (DV, D)),
                      same(layer + "igate_preact.weight", (NH, D)), same(layer + "igate_preact.bias", (NH,)),
                      same(layer + "fgate_preact.weight", (NH, D)), same(layer + "fgate_preact.bias", (NH,))]
        rules += [same(layer + "multihead_norm.weight", (DV,)), same(layer + "out_proj.weight", (D, DV)),
                  same("norm_ffn.weight", (D,))]
        if fused:
            rules.append(split("ffn.proj_up_gate_z.weight", [("ffn.proj_up_gate.weight", (F, D)),
                                                             ("ffn.proj_up.weight", (F, D))]))
        else:
            rules += [same("ffn.proj_up_gate.weight", (F, D)), same("ffn.proj_up.weight", (F, D))]
        rules.append(same("ffn.proj_down.weight", (D, F)))
    rules.append(TensorRule("backbone.out_norm.weight", (D,), (("out_norm.weight", (D,)),)))
    rules.append(TensorRule("lm_head.weight", (V, D), (("lm_head.weight", (V, D)),)))
    return rules


class HFNameMap:
    """Turns the stored HF names (and tensors) into our model's, for ``checkpoint.load_pretrained``.

    A stored name the table does not know keeps its HF name (and so shows up as "unexpected"); a
    fused tensor of the wrong size keeps its own name with its stored shape, and is reported as
    "unexpected" with its parts "missing".
    """

    def __init__(self, hf: dict) -> None:
        self.rules = {rule.hf_name: rule for rule in tensor_table(hf)}
        self._source = {our_name: rule.hf_name for rule in self.rules.values() for our_name, _ in rule.parts}

    def stored_name(self, our_name: str) -> str:
        """The HF tensor that holds (a slice of) our tensor ``our_name``."""
        return self._source.get(our_name, our_name)

    def _splittable(self, name: str, shape: tuple[int, ...]) -> bool:
        rule = self.rules.get(name)
        return rule is not None and (len(rule.parts) == 1 or tuple(shape) == rule.hf_shape)

    def map_shapes(self, stored: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        ours = {}
        for name, shape in stored.items():
            if not self._splittable(name, shape):
                ours[name] = tuple(shape)
            elif len(self.rules[name].parts) == 1:
                ours[self.rules[name].parts[0][0]] = tuple(shape)
            else:
                ours.update(dict(self.rules[name].parts))
        return ours

    def map_tensors(self, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ours = {}
        for name, tensor in stored.items():
            if not self._splittable(name, tuple(tensor.shape)):
                ours[name] = tensor
                continue
            parts = self.rules[name].parts
            pieces = tensor.split([shape[0] for _, shape in parts], dim=0) if len(parts) > 1 else [tensor]
            ours.update({our_name: piece.contiguous() for (our_name, _), piece in zip(parts, pieces)})
        return ours
