"""Programs: flags, configs, training loops, checkpoints, logging and reports."""
