"""Training xLSTM language models: data, recipes, the trainer, checkpoints and distributed runs."""
