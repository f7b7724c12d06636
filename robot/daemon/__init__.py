"""The long-running robot: lifecycle, dispatcher, connection workers, timed jobs, systemd."""
