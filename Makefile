.PHONY: run test lint clean

# Set up everything and run the robot on SQLite with a local capture SMTP server.
run:
	./scripts/try-it.sh

# Set up everything and run ruff, mypy and every test (SQLite and PostgreSQL).
test:
	./scripts/test.sh

lint:
	./scripts/setup-venv.sh
	.venv/bin/ruff check robot tests migrations
	.venv/bin/ruff format --check robot tests migrations
	.venv/bin/mypy

clean:
	rm -rf .venv robot.db robot.db-wal robot.db-shm sink-mail .mypy_cache .ruff_cache .pytest_cache
