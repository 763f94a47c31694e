"""The `kubeml` command line: typer commands, one module per noun, that only call the client."""
