"""robot.config: robot.ini parsing, environment overrides, accounts, presets and secrets."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from robot.config import Settings, load_settings
from robot.errors import ConfigError

MINIMAL = """
[sender]
address = robot@example.org
"""


def write_ini(tmp_path: Path, text: str, name: str = "robot.ini") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    return load_settings(write_ini(tmp_path, text), environ={} if environ is None else environ)


def config_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    path = write_ini(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={} if environ is None else environ)
    return caught.value


# Defaults ------------------------------------------------------------------------------------


def test_defaults_named_in_the_spec(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL)

    robot = settings.robot
    assert robot.grace_minutes == 5
    assert robot.poll_seconds == 5
    assert robot.batch_size == 100
    assert robot.connections == 4
    assert robot.rate == 0
    assert robot.retry_minutes == 10
    assert robot.max_errors == 10
    assert robot.lease_seconds == 300
    assert robot.retention_days == 30
    assert robot.template_seconds == 5

    smtp = settings.smtp
    assert smtp.security == "starttls"
    assert smtp.verify_tls is True
    assert smtp.timeout_seconds == 30
    assert smtp.max_per_connection == 100
    assert smtp.direct is False
    assert smtp.dns_port == 53
    assert smtp.direct_port == 25
    assert settings.default_account.port == 587

    assert settings.attachments.allowed is True
    assert settings.attachments.max_mb == 10
    assert settings.bounces.poll_seconds == 60
    assert settings.bounces.verp is False
    assert settings.sender.allow_row_sender is True
    assert list(settings.accounts) == ["default"]


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("none", 25)])
def test_port_follows_security_unless_set(tmp_path: Path, security: str, port: int) -> None:
    settings = load(tmp_path, MINIMAL + f"[smtp]\nsecurity = {security}\n")
    assert settings.default_account.port == port

    explicit = load(tmp_path, MINIMAL + f"[smtp]\nsecurity = {security}\nport = 2525\n")
    assert explicit.default_account.port == 2525


def test_durations_accept_decimals(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        MINIMAL
        + """
[robot]
grace_minutes = 0.5
poll_seconds = 0.25
retry_minutes = 1.5
lease_seconds = 30.5
retention_days = 0.5
rate = 2.5
[smtp]
timeout_seconds = 7.5
""",
    )
    assert settings.robot.grace_minutes == 0.5
    assert settings.robot.poll_seconds == 0.25
    assert settings.robot.retry_minutes == 1.5
    assert settings.robot.lease_seconds == 30.5
    assert settings.robot.retention_days == 0.5
    assert settings.robot.rate == 2.5
    assert settings.smtp.timeout_seconds == 7.5


def test_data_timeout_seconds_is_ten_minutes_unless_set_per_account(tmp_path: Path) -> None:
    """The reply to the end of the message gets RFC 5321's 10 minutes (§4.5.3.2.6)."""
    assert load(tmp_path, MINIMAL).smtp.data_timeout_seconds == 600
    settings = load(
        tmp_path,
        MINIMAL
        + "[smtp]\ndata_timeout_seconds = 120\n"
        + "[account:news]\naddress = news@example.org\n"
        + "[account:bulk]\naddress = bulk@example.org\ndata_timeout_seconds = 900.5\n",
    )
    assert settings.smtp.data_timeout_seconds == 120
    assert settings.accounts["news"].smtp.data_timeout_seconds == 120
    assert settings.accounts["bulk"].smtp.data_timeout_seconds == 900.5
    assert settings.accounts["bulk"].smtp.timeout_seconds == 30
    error = config_error(tmp_path, MINIMAL + "[smtp]\ndata_timeout_seconds = 0\n")
    assert error.key == "data_timeout_seconds" and "positive" in str(error)


def test_booleans_in_their_usual_spellings(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        MINIMAL.replace("[sender]", "[sender]\nallow_row_sender = no")
        + "[smtp]\nverify_tls = off\ndirect = Yes\n[attachments]\nallowed = 0\n",
    )
    assert settings.smtp.verify_tls is False
    assert settings.smtp.direct is True
    assert settings.attachments.allowed is False
    assert settings.sender.allow_row_sender is False


# Errors name the key and the file -----------------------------------------------------------


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[smtpp]\nhost = x\n")
    assert "smtpp" in str(error)
    assert str(tmp_path / "robot.ini") in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL + "[robot]\ngrace_minute = 1\n", "grace_minute"),
        (MINIMAL + "[smtp]\nhostname = x\n", "hostname"),
        (MINIMAL + "[robot]\nbatch_size = ten\n", "batch_size"),
        (MINIMAL + "[robot]\nbatch_size = 2.5\n", "batch_size"),
        (MINIMAL + "[robot]\ngrace_minutes = soon\n", "grace_minutes"),
        (MINIMAL + "[smtp]\nverify_tls = maybe\n", "verify_tls"),
        (MINIMAL + "[smtp]\nport = smtp\n", "port"),
        (MINIMAL + "[smtp]\nsecurity = tls\n", "security"),
        (MINIMAL + "[attachments]\nmax_mb = 101\n", "max_mb"),
        (MINIMAL + "[robot]\ntemplate_seconds = 0\n", "template_seconds"),
        (MINIMAL + "[robot]\ntemplate_seconds = 301\n", "template_seconds"),
        (MINIMAL + "[log]\nformat = xml\n", "format"),
        ("[sender]\nname = Nobody\n", "address"),
        ("[robot]\nname = r1\n", "address"),
        (MINIMAL + "[account:news]\nname = News\nbogus = 1\n", "bogus"),
    ],
)
def test_bad_value_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    error = config_error(tmp_path, text)
    assert key in str(error)
    assert str(tmp_path / "robot.ini") in str(error)


def test_bad_value_quotes_the_value(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[robot]\nconnections = lots\n")
    assert "lots" in str(error)
    assert error.key == "connections"
    assert error.path == str(tmp_path / "robot.ini")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.ini", environ={})


def test_not_an_ini_file(tmp_path: Path) -> None:
    error = config_error(tmp_path, "address = robot@example.org\n")
    assert str(tmp_path / "robot.ini") in str(error)


@pytest.mark.parametrize("name", ["News", "news letter", "default", "n€ws"])
def test_bad_account_names(tmp_path: Path, name: str) -> None:
    error = config_error(tmp_path, MINIMAL + f"[account:{name}]\nname = X\n")
    assert name in str(error)


def test_password_file_must_exist(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + f"[smtp]\npassword_file = {tmp_path / 'nope'}\n")
    assert "password_file" in str(error)


# Environment --------------------------------------------------------------------------------


def test_environment_wins_over_the_file(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        MINIMAL + "[smtp]\nhost = file.example.org\nport = 25\n[robot]\ngrace_minutes = 5\n",
        {
            "ROBOT_SMTP_HOST": "env.example.org",
            "ROBOT_ROBOT_GRACE_MINUTES": "0.5",
            "ROBOT_SENDER_NAME": "From Env",
            "ROBOT_DATABASE_URL": "sqlite:////tmp/env.db",
            "ROBOT_SMTP_VERIFY_TLS": "false",
        },
    )
    assert settings.smtp.host == "env.example.org"
    assert settings.smtp.port == 25  # untouched keys stay
    assert settings.robot.grace_minutes == 0.5
    assert settings.sender.name == "From Env"
    assert settings.default_account.sender.name == "From Env"
    assert settings.database.url == "sqlite:////tmp/env.db"
    assert settings.smtp.verify_tls is False


def test_environment_can_supply_a_required_key(tmp_path: Path) -> None:
    settings = load(tmp_path, "[robot]\nname = r1\n", {"ROBOT_SENDER_ADDRESS": "env@example.org"})
    assert settings.sender.address == "env@example.org"


def test_unrelated_environment_is_ignored(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL, {"HOME": "/root", "ROBOT_CONFIG": "/elsewhere.ini"})
    assert settings.sender.address == "robot@example.org"


def test_unknown_environment_key_is_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL, {"ROBOT_SMTP_XYZ": "1"})
    assert "ROBOT_SMTP_XYZ" in str(error)
    assert "xyz" in str(error)


def test_bad_environment_value_names_the_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL, {"ROBOT_ROBOT_BATCH_SIZE": "many"})
    assert "batch_size" in str(error)
    assert "many" in str(error)


def test_account_environment_override(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        MINIMAL + "[account:news-letter]\naddress = news@example.org\nhost = a.example.org\n",
        {
            "ROBOT_ACCOUNT_NEWS_LETTER_HOST": "b.example.org",
            "ROBOT_ACCOUNT_NEWS_LETTER_PASSWORD_FILE": "",
            "ROBOT_ACCOUNT_NEWS_LETTER_DIRECT_PORT": "2526",
        },
    )
    account = settings.accounts["news-letter"]
    assert account.smtp.host == "b.example.org"
    assert account.smtp.direct_port == 2526
    assert account.smtp.port is None
    assert set(settings.accounts) == {"default", "news-letter"}


def test_unknown_account_environment_key_is_refused(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        MINIMAL + "[account:news]\naddress = news@example.org\n",
        {"ROBOT_ACCOUNT_NEWS_COLOUR": "red"},
    )
    assert "ROBOT_ACCOUNT_NEWS_COLOUR" in str(error)


# Accounts -----------------------------------------------------------------------------------


def test_accounts_inherit_smtp_and_sender(tmp_path: Path) -> None:
    secret = write_ini(tmp_path, "s3cret\n", name="smtp_password")
    settings = load(
        tmp_path,
        f"""
[smtp]
host = smtp.example.org
port = 2525
security = ssl
username = robot@example.org
password_file = {secret}
timeout_seconds = 12
[sender]
address = robot@example.org
name = Robot
reply_to = office@example.org
footer_text = Example School
[account:news]
address = news@example.org
name = Newsletter
""",
    )
    news = settings.accounts["news"]
    assert news.name == "news"
    assert news.sender.address == "news@example.org"
    assert news.sender.name == "Newsletter"
    assert news.sender.reply_to == "office@example.org"
    assert news.sender.footer_text == "Example School"
    assert news.smtp.host == "smtp.example.org"
    assert news.port == 2525
    assert news.smtp.security == "ssl"
    assert news.smtp.timeout_seconds == 12
    assert news.smtp.username == "robot@example.org"
    assert news.read_password() == "s3cret"
    # The default account is untouched by the other.
    assert settings.default_account.sender.name == "Robot"


def test_an_unreadable_password_file_names_the_file_and_the_user(tmp_path: Path) -> None:
    """A file the service user cannot read (root's mode 600) must say who could not read it."""
    secret = write_ini(tmp_path, "s3cret\n", name="smtp_password")
    settings = load(
        tmp_path,
        f"[smtp]\nusername = robot@example.org\npassword_file = {secret}\n"
        "[sender]\naddress = robot@example.org\n",
    )
    secret.unlink()  # rotated away after start: read anew at each login, so it is missed then
    with pytest.raises(ConfigError) as error:
        settings.default_account.read_password()
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert str(error.value).startswith(
        f"password file of account default unreadable: {secret}: No such file or directory "
        f"(read as user {user})"
    )
    assert error.value.key == "password_file"


def test_a_relative_password_file_is_taken_from_the_ini_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with SQLite: the service runs in its state directory, an admin anywhere; both must
    read the file next to robot.ini."""
    write_ini(tmp_path, "s3cret\n", name="smtp_password")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(
        write_ini(
            tmp_path,
            "[smtp]\nusername = robot@example.org\npassword_file = smtp_password\n"
            "[sender]\naddress = robot@example.org\n",
        ),
        environ={"ROBOT_BOUNCES_CA_FILE": "ca.pem"},
    )
    assert settings.default_account.smtp.password_file == str(tmp_path / "smtp_password")
    assert settings.default_account.read_password() == "s3cret"
    assert settings.bounces.ca_file == str(tmp_path / "ca.pem")


def test_account_with_own_username_inherits_no_password(tmp_path: Path) -> None:
    secret = write_ini(tmp_path, "robot-secret\n", name="smtp_password")
    settings = load(
        tmp_path,
        f"""
[smtp]
host = smtp.example.org
username = robot@example.org
password = inline-robot-secret
password_file = {secret}
[sender]
address = robot@example.org
[account:news]
address = news@example.org
username = news@example.org
""",
    )
    news = settings.accounts["news"]
    assert news.smtp.username == "news@example.org"
    assert news.smtp.password is None
    assert news.smtp.password_file is None
    assert news.smtp.host == "smtp.example.org"  # the server is still inherited


def test_account_with_own_password_file_uses_it(tmp_path: Path) -> None:
    own = write_ini(tmp_path, "news-secret\n", name="news_password")
    settings = load(
        tmp_path,
        f"""
[smtp]
username = robot@example.org
password = inline-robot-secret
[sender]
address = robot@example.org
[account:news]
address = news@example.org
password_file = {own}
""",
    )
    assert settings.accounts["news"].read_password() == "news-secret"


def test_account_inherits_the_sender_address(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL + "[account:news]\nname = News\n")
    assert settings.accounts["news"].sender.address == "robot@example.org"


# Presets ------------------------------------------------------------------------------------


def test_preset_fills_host_port_security(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL + "[smtp]\npreset = yahoo\nusername = me@yahoo.com\n")
    smtp = settings.smtp
    assert smtp.host == "smtp.mail.yahoo.com"
    assert smtp.security == "ssl"
    assert settings.default_account.port == 465
    assert settings.default_account.needs_app_password is True


def test_preset_explicit_host_and_port_override(tmp_path: Path) -> None:
    settings = load(
        tmp_path, MINIMAL + "[smtp]\npreset = gmail\nhost = smtp-relay.gmail.com\nport = 465\n"
    )
    assert settings.smtp.host == "smtp-relay.gmail.com"
    assert settings.default_account.port == 465
    assert settings.smtp.security == "starttls"


def test_preset_explicit_security_overrides(tmp_path: Path) -> None:
    # Yahoo also takes STARTTLS on 587; an operator who says so must get it.
    settings = load(tmp_path, MINIMAL + "[smtp]\npreset = yahoo\nport = 587\nsecurity = starttls\n")
    assert settings.default_account.port == 587
    assert settings.smtp.security == "starttls"


def test_unknown_preset(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[smtp]\npreset = hotmial\n")
    assert "hotmial" in str(error)
    assert "preset" in str(error)


def test_account_preset_replaces_inherited_server(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        MINIMAL
        + """
[smtp]
host = relay.example.org
port = 25
security = none
[account:personal]
address = me@gmail.com
preset = gmail
""",
    )
    personal = settings.accounts["personal"]
    assert personal.smtp.host == "smtp.gmail.com"
    assert personal.port == 587
    assert personal.smtp.security == "starttls"
    assert settings.default_account.smtp.host == "relay.example.org"


# Database URL -------------------------------------------------------------------------------


def test_bare_postgresql_url_uses_psycopg3(tmp_path: Path) -> None:
    settings = load(
        tmp_path, MINIMAL + "[database]\nurl = postgresql://robot@db.example.org/mail\n"
    )
    assert settings.database.url == "postgresql+psycopg://robot@db.example.org/mail"


def test_a_heroku_style_postgres_url_is_postgresql(tmp_path: Path) -> None:
    settings = load(tmp_path, MINIMAL + "[database]\nurl = postgres://robot:pw@db/mail\n")
    assert settings.database.url == "postgresql+psycopg://robot:pw@db/mail"


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://robot@db/mail", "sqlite:////var/lib/robot.db", "sqlite://"]
)
def test_other_urls_are_kept(tmp_path: Path, url: str) -> None:
    settings = load(tmp_path, MINIMAL + f"[database]\nurl = {url}\n")
    assert settings.database.url == url


def test_a_relative_sqlite_path_is_taken_from_robot_ini_s_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")  # wherever a command runs, the database is the same file
    settings = load(tmp_path, MINIMAL + "[database]\nurl = sqlite:///state/robot.db\n")
    assert settings.database.url == f"sqlite:///{tmp_path.resolve()}/state/robot.db"
    from_env = load(tmp_path, MINIMAL, environ={"ROBOT_DATABASE_URL": "sqlite:///x.db"})
    assert from_env.database.url == f"sqlite:///{tmp_path.resolve()}/x.db"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql+psycopg2://robot@db/mail", "the driver 'psycopg2' is not installed"),
        ("postgresql+asyncpg://robot@db/mail", "the driver 'asyncpg' is not installed"),
        ("oracle://robot@db/mail", "'oracle' databases are not supported"),
        ("mysql+mysqldb://robot@db/mail", "the driver 'mysqldb' is not installed"),
        ("mariadb+asyncmy://robot@db/mail", "the driver 'asyncmy' is not installed"),
        ("mysql://robot@db", "no database name after the host"),
    ],
)
def test_a_foreign_url_names_the_key_and_what_to_write(
    tmp_path: Path, url: str, problem: str
) -> None:
    error = config_error(tmp_path, MINIMAL + f"[database]\nurl = {url}\n")
    assert error.key == "url"
    assert problem in str(error)
    assert (
        "write sqlite:///PATH, postgresql://USER@HOST/DB or mysql://USER@HOST/DB (MariaDB, MySQL)"
        in str(error)
    )


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("mysql://robot@db.example.org/school", "mysql+pymysql://robot@db.example.org/school"),
        ("mariadb://robot:pw@db:3307/school", "mysql+pymysql://robot:pw@db:3307/school"),
        ("mysql+pymysql://robot@db/school", "mysql+pymysql://robot@db/school"),
        ("mariadb+pymysql://robot@db/school?charset=latin1", "mysql+pymysql://robot@db/school"),
    ],
)
def test_mysql_urls_use_pymysql_in_utf8mb4(tmp_path: Path, url: str, normalised: str) -> None:
    settings = load(tmp_path, MINIMAL + f"[database]\nurl = {url}\n")
    assert settings.database.url == normalised + "?charset=utf8mb4"


def test_bad_database_url(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[database]\nurl = not a url\n")
    assert "url" in str(error)
    assert str(tmp_path / "robot.ini") in str(error)


# Secrets ------------------------------------------------------------------------------------


def test_read_password_prefers_the_inline_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = write_ini(tmp_path, "from-file\n", name="pw")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "smtp_password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    settings = load(tmp_path, MINIMAL + f"[smtp]\npassword = inline\npassword_file = {secret}\n")
    assert settings.default_account.read_password() == "inline"


def test_read_password_rereads_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "smtp_password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    secret = write_ini(tmp_path, "first\n", name="pw")
    account = load(tmp_path, MINIMAL + f"[smtp]\npassword_file = {secret}\n").default_account
    assert account.read_password() == "first"
    secret.write_text("rotated\n")
    assert account.read_password() == "rotated"


def test_read_password_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    secret = write_ini(tmp_path, "first\n", name="pw")
    account = load(tmp_path, MINIMAL + f"[smtp]\npassword_file = {secret}\n").default_account
    secret.unlink()
    with pytest.raises(ConfigError, match="password"):
        account.read_password()


def test_read_password_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "smtp_password").write_text("default-secret\n")
    (creds / "account_news_letter_password").write_text("news-secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load(
        tmp_path,
        MINIMAL + "[account:news-letter]\naddress = news@example.org\nusername = news\n",
    )
    assert settings.default_account.read_password() == "default-secret"
    assert settings.accounts["news-letter"].read_password() == "news-secret"


def test_read_password_none_when_nothing_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # holds no smtp_password
    settings = load(tmp_path, MINIMAL)
    assert settings.default_account.read_password() is None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert settings.default_account.read_password() is None


def test_password_never_in_repr(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        MINIMAL
        + "[smtp]\nusername = robot\npassword = hunter2-file\n"
        + "[account:news]\naddress = news@example.org\nusername = news\npassword = hunter3\n",
        {"ROBOT_ACCOUNT_NEWS_PASSWORD": "hunter4-env"},
    )
    assert settings.default_account.read_password() == "hunter2-file"
    assert settings.accounts["news"].read_password() == "hunter4-env"
    text = repr(settings) + str(settings) + repr(settings.accounts)
    assert "hunter" not in text
    assert "news@example.org" in text  # the repr is not simply empty


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    """ROBOT_SMTP_PORT=abc used to be blamed on robot.ini."""
    error = config_error(tmp_path, MINIMAL, environ={"ROBOT_SMTP_PORT": "abc"})
    assert str(error).startswith("ROBOT_SMTP_PORT (from the environment): expected an integer")


def test_an_unknown_key_suggests_the_one_meant(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[smtp]\ntimout_seconds = 3\n")
    assert "[smtp] timout_seconds: unknown key (did you mean timeout_seconds?)" in str(error)


def test_a_byte_order_mark_at_the_start_of_robot_ini_is_read_past(tmp_path: Path) -> None:
    path = tmp_path / "robot.ini"
    path.write_bytes(b"\xef\xbb\xbf" + (MINIMAL + "[smtp]\nport = 2525\n").encode())
    assert load_settings(path, environ={}).smtp.port == 2525
