"""The run folder: its files, ledger and checkpoints."""
