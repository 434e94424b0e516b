"""Training: data, trainer, checkpoints, distributed runs and the ``xlstm train`` command."""
