"""Language models: configs, presets, the model-level state, and the two architectures.

- ``XLSTMLanguageModel`` (model_type "xlstm"): the paper's xLSTM[a:b] (xlstm.py)
- ``XLSTMLargeLanguageModel`` (model_type "xlstm-large"): the xLSTM 7B architecture (large.py)
"""

from .base import MODEL_REGISTRY, LanguageModel, register_model
from .config import XLSTMConfig, XLSTMLargeConfig, config_from_dict, config_from_json
from .large import XLSTMLargeLanguageModel
from .presets import PRESETS, build_model, from_preset, list_presets, preset_config
from .state import ModelState
from .xlstm import XLSTMLanguageModel

__all__ = [
    "LanguageModel", "MODEL_REGISTRY", "register_model", "XLSTMConfig", "XLSTMLargeConfig", "config_from_dict",
    "config_from_json", "XLSTMLanguageModel", "XLSTMLargeLanguageModel", "ModelState", "PRESETS", "build_model",
    "from_preset", "list_presets", "preset_config",
]
