"""`python -m kubeml` runs the CLI."""

from kubeml.cli.app import main

main()
