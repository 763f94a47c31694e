"""What the control plane keeps on disk: metadata, checkpoints, task logs, function code."""
