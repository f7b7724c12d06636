"""The outbox tables and everything that reads or writes them: schema, engines, the robot's
side (claims.py), the host's and operator's side (operations.py), what differs by database
(dialects.py), the group commit, wake-ups."""
