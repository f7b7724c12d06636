.PHONY: run test lint clean bench

# Set up everything and run the robot on SQLite with a local capture SMTP server.
run:
	./scripts/try-it.sh

# Set up everything and run ruff, mypy, lint-imports and every test (SQLite, PostgreSQL, MariaDB).
test:
	./scripts/test.sh

# Throughput benchmark against Postfix's smtp-sink (never in CI): docs/benchmarks.md.
# Options go in BENCH_ARGS, e.g. make bench BENCH_ARGS="--quick" (see bench/run.py).
bench:
	./scripts/setup-venv.sh
	.venv/bin/python -m pip install --quiet -e ".[dev,bench]"
	./scripts/ensure-smtp-sink.sh
	./scripts/ensure-postgres.sh
	./scripts/ensure-mariadb.sh
	.venv/bin/python -m bench.run $(BENCH_ARGS)

lint:
	./scripts/setup-venv.sh
	.venv/bin/ruff check robot tests migrations scripts
	.venv/bin/ruff format --check robot tests migrations scripts
	.venv/bin/mypy
	.venv/bin/lint-imports

clean:
	rm -rf .venv robot.db robot.db-wal robot.db-shm sink-mail .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
