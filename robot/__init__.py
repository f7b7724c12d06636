"""email-robot: a long-running daemon that sends the rows of an `outbox` table over SMTP."""

__version__ = "0.1.0"
