"""docs/contract.md, the sample robot.ini and robot/config.py name the same keys."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from robot.config import SECTIONS

ROOT = Path(__file__).parents[2]
CONTRACT = ROOT / "docs" / "contract.md"
SAMPLE = ROOT / "robot.ini"
ACCOUNT_SECTIONS = ("smtp", "sender")  # an [account:NAME] takes the keys of both
SECTION_LINE = re.compile(r"^#?\s*\[([a-z]+)(?::[a-z0-9_-]+)?\]\s*$")
KEY_LINE = re.compile(r"^#?\s*([a-z][a-z0-9_]*)\s+=\s")


def config_keys() -> dict[str, set[str]]:
    return {name: {f.name for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}


def contract_keys() -> dict[str, set[str]]:
    """The keys in the tables under '### `[section]`' headings of the robot.ini chapter."""
    found: dict[str, set[str]] = {}
    section = None
    chapter = CONTRACT.read_text().split("## robot.ini", 1)[1].split("\n## ", 1)[0]
    for line in chapter.splitlines():
        heading = re.match(r"^### `\[([a-z]+)\]`", line)
        if heading:
            section = heading[1]
            found[section] = set()
            continue
        row = re.match(r"^\| `([a-z_]+)` \|", line)
        if row and section is not None:
            found[section].add(row[1])
    return found


def sample_keys() -> dict[str, set[str]]:
    """Every key written in the sample robot.ini, set or commented out, by section."""
    found: dict[str, set[str]] = {}
    sections: tuple[str, ...] = ()
    for line in SAMPLE.read_text().splitlines():
        heading = SECTION_LINE.match(line)
        if heading:
            sections = ACCOUNT_SECTIONS if heading[1] == "account" else (heading[1],)
            continue
        key = KEY_LINE.match(line)
        if key and sections:
            found.setdefault(" or ".join(sections), set()).add(key[1])
    return found


def test_the_contract_lists_every_key_of_every_section_and_no_other() -> None:
    assert contract_keys() == config_keys()


def test_every_key_in_the_sample_exists_in_its_section() -> None:
    known = config_keys()
    for where, keys in sample_keys().items():
        allowed = set().union(*(known[s] for s in where.split(" or ")))
        assert keys <= allowed, f"[{where}]: {sorted(keys - allowed)}"


def test_the_sample_shows_every_section() -> None:
    shown = {s for where in sample_keys() for s in where.split(" or ")}
    assert shown == set(SECTIONS)
