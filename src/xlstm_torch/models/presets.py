"""Named model configs and the one-line way to build a model from them.

    model = xlstm_torch.from_preset("xlstm-125m-7:1")            # fresh paper init
    model = xlstm_torch.from_preset("debug", embedding_dim=128)  # any config field can be overridden
    with torch.device("meta"):                                   # shapes only, no memory
        model = xlstm_torch.from_preset("xlstm-7b")

Paper sizes (xLSTM paper, the language models trained on 300B tokens; GPT-2 vocab
padded to 50304, context 2048), width D x blocks L: 125M = 768 x 24, 350M = 1024 x 48,
760M = 1536 x 48, 1.3B = 2048 x 48. With mLSTM blocks of about 6 D² parameters these give the
nominal counts within 2 % (24 blocks at D 1024 or 1536 would give only ~200M and ~410M). Each size
comes as xLSTM[1:0] (mLSTM only) and xLSTM[7:1], the sLSTM blocks placed by the ratio rule of
``XLSTMConfig.slstm_at`` (the last block of every 8). ``xlstm-7b`` is the xLSTM 7B architecture.
"""

from __future__ import annotations

from .base import MODEL_REGISTRY, LanguageModel
from .config import XLSTMConfig, XLSTMLargeConfig

# (name, D, L) of the paper's language models
_PAPER_SIZES = (("125m", 768, 24), ("350m", 1024, 48), ("760m", 1536, 48), ("1.3b", 2048, 48))

PRESETS: dict[str, XLSTMConfig | XLSTMLargeConfig] = {
    # Tiny, mLSTM and sLSTM mixed (m s m s): a training step on a CPU takes milliseconds.
    "debug": XLSTMConfig(vocab_size=512, embedding_dim=64, num_blocks=4, slstm_at="1:1", chunk_size=16,
                         context_length=256),
    # Tiny xLSTM 7B architecture, for tests of the large model's code paths.
    "debug-large": XLSTMLargeConfig(vocab_size=512, embedding_dim=64, num_blocks=2, num_heads=4, chunk_size=16,
                                    context_length=256),
    **{f"xlstm-{name}-{ratio}": XLSTMConfig(embedding_dim=D, num_blocks=L, slstm_at=ratio)
       for name, D, L in _PAPER_SIZES for ratio in ("1:0", "7:1")},
    "xlstm-7b": XLSTMLargeConfig(),
}


def list_presets() -> list[str]:
    return list(PRESETS)


def preset_config(name: str, **overrides):
    """The config of preset ``name`` with some fields replaced (validated again)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def build_model(config) -> LanguageModel:
    """A freshly initialised model of the class registered for ``config.model_type``."""
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_REGISTRY:
        raise ValueError(f"no model registered for model_type {model_type!r}; known: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[model_type](config)


def from_preset(name: str, **overrides) -> LanguageModel:
    """Build the model of preset ``name`` (fresh init), with config fields overridden by keyword."""
    return build_model(preset_config(name, **overrides))
