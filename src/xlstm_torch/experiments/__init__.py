"""The xLSTM paper's small-scale evidence (Sec. 4.1-4.3): formal languages, MQAR and language modelling, run
against the Transformer, Mamba and LSTM baselines by one harness. Command line: ``xlstm experiment``."""
