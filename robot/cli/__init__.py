"""The `email-robot` command line."""

from robot.cli.main import main

__all__ = ["main"]
