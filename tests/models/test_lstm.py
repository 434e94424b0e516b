"""LSTM baseline: state continuation, packed documents as if alone, config round trip and registration."""

import pytest
import torch

from xlstm_torch.models.base import MODEL_REGISTRY
from xlstm_torch.models.lstm import LSTMConfig, LSTMLanguageModel


def test_state_continuation_and_packed_documents():
    torch.manual_seed(0)
    model = LSTMLanguageModel(LSTMConfig(vocab_size=11, hidden_size=16)).double()
    ids = torch.randint(0, 11, (1, 13))
    full, _ = model(ids)
    first, state = model(ids[:, :6])
    second, _ = model(ids[:, 6:], state=state)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-12, atol=1e-12)
    packed, state = model(ids, cu_seqlens=torch.tensor([0, 6, 13]))
    alone = torch.cat([first, model(ids[:, 6:])[0]], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-12, atol=1e-12)
    assert state is None and not torch.allclose(packed, full)


def test_config_round_trip_and_registry():
    c = LSTMConfig(vocab_size=32, hidden_size=24, num_layers=3)
    assert LSTMConfig.from_dict(c.to_dict()) == c
    assert MODEL_REGISTRY["lstm"] is LSTMLanguageModel
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMConfig(hidden_size=0)
