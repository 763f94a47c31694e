"""Asking y/N before a command deletes things, and refusing to guess without a terminal."""

from __future__ import annotations

import sys

import typer

from kubeml.errors import InvalidInputError


def interactive() -> bool:
    """True when a person can answer: stdin is a terminal (not a pipe, a file or CI)."""
    return sys.stdin is not None and sys.stdin.isatty()


def confirm(question: str, *, yes: bool, flag: str = "--yes") -> None:
    """Go on if `yes` or the user answers y; otherwise exit 1 without touching anything."""
    if yes:
        return
    if not interactive():
        raise InvalidInputError(
            f"{question.rstrip('?')}: refusing without a confirmation, as stdin is not a "
            f"terminal; pass {flag} to go ahead"
        )
    if not typer.confirm(question, default=False, err=True):
        typer.echo("nothing deleted", err=True)
        raise typer.Exit(1)
