"""[bounces]: the mailbox URL, its password from file, environment or systemd credential, and
IMAP folder names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from robot.bounces.mailbox import quoted_folder
from robot.config import BounceSettings, MailboxUrl, load_settings, parse_mailbox_url
from robot.errors import ConfigError

INI = """
[sender]
address = robot@example.org

[bounces]
mailbox = {mailbox}
"""


def load(tmp_path: Path, mailbox: str, environ: dict[str, str] | None = None) -> BounceSettings:
    path = tmp_path / "robot.ini"
    path.write_text(INI.format(mailbox=mailbox))
    return load_settings(path, environ=environ or {}).bounces


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "imaps://bounces@imap.example.org/INBOX",
            MailboxUrl("imaps", "bounces", "imap.example.org", 993, "INBOX"),
        ),
        (
            "imap://bounces%40example.org@imap.example.org:1143/Bounces/New",
            MailboxUrl("imap", "bounces@example.org", "imap.example.org", 1143, "Bounces/New"),
        ),
        ("IMAPS://u@[::1]", MailboxUrl("imaps", "u", "::1", 993, "INBOX")),
        (
            "imaps://u@127.0.0.1/R%C3%BCckl%C3%A4ufer",
            MailboxUrl("imaps", "u", "127.0.0.1", 993, "Rückläufer"),
        ),
    ],
)
def test_mailbox_urls(url: str, expected: MailboxUrl) -> None:
    assert parse_mailbox_url(url) == expected


def test_a_mailbox_url_prints_without_secrets() -> None:
    url = parse_mailbox_url("imaps://bounces%40example.org@[::1]:10993/INBOX")
    assert str(url) == "imaps://bounces@example.org@[::1]:10993/INBOX"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("pop3://u@host/INBOX", "imaps:// or imap://"),
        ("imaps://host/INBOX", "no user name"),
        ("imaps://u:secret@host/INBOX", "no password in the URL"),
        ("imaps://u@:993/INBOX", "no host name"),
        ("imaps://u@host:99999/INBOX", "port"),
        ("imaps://u@host/INBOX?x=1", "query"),
    ],
)
def test_bad_mailbox_urls_are_refused_when_robot_ini_is_read(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, url)
    assert problem in str(caught.value)
    assert "[bounces] mailbox" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_poll_seconds_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="poll_seconds"):
        load(tmp_path, "imaps://u@host/INBOX", {"ROBOT_BOUNCES_POLL_SECONDS": "0"})


def test_password_from_file_environment_or_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert load(tmp_path, "imaps://u@host").read_password() is None

    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "bounces_password").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert load(tmp_path, "imaps://u@host").read_password() == "from-systemd"

    secret = tmp_path / "imap_password"
    secret.write_text("from-file\n")
    settings = load(tmp_path, "imaps://u@host", {"ROBOT_BOUNCES_PASSWORD_FILE": str(secret)})
    assert settings.read_password() == "from-file"
    secret.write_text("rotated\n")  # read anew at every poll
    assert settings.read_password() == "rotated"

    settings = load(tmp_path, "imaps://u@host", {"ROBOT_BOUNCES_PASSWORD": "from-env"})
    assert settings.read_password() == "from-env"
    assert "from-env" not in repr(settings)


def test_an_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    settings = BounceSettings(mailbox="imaps://u@host", password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="unreadable"):
        settings.read_password()


@pytest.mark.parametrize(
    ("folder", "wire"),
    [
        ("INBOX", '"INBOX"'),
        ("Bounces/Done", '"Bounces/Done"'),
        ("Rückläufer", '"R&APw-ckl&AOQ-ufer"'),  # RFC 3501 modified UTF-7
        ("A&B", '"A&-B"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("日本語", '"&ZeVnLIqe-"'),
    ],
)
def test_folder_names_on_the_wire(folder: str, wire: str) -> None:
    assert quoted_folder(folder) == wire


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: None, "is not a readable file (No such file or directory)"),
        (lambda p: p.mkdir(), "is not a readable file (Is a directory)"),
        (lambda p: p.write_text(" \n"), "is empty"),
    ],
    ids=["missing", "directory", "empty"],
)
def test_the_password_file_is_checked_when_robot_ini_is_read(
    tmp_path: Path, make: Callable[[Path], object], problem: str
) -> None:
    """As the [smtp] one: a bad file stops the start, not the first poll an hour later."""
    secret = tmp_path / "imap_password"
    make(secret)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "imaps://u@host", {"ROBOT_BOUNCES_PASSWORD_FILE": str(secret)})
    assert str(caught.value).startswith(
        f"{tmp_path / 'robot.ini'}: [bounces] password_file: {secret} {problem} ("
    )
    assert caught.value.key == "password_file"
