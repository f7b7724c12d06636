"""The outbox tables and everything that reads or writes them: schema, engines, the robot's
side (claim, lease, finish), the host's and operator's side, the group commit, wake-ups."""
