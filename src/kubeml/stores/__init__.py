"""Dataset and model stores: where arrays and weights live between invocations."""
