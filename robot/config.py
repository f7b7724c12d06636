"""robot.ini parsed once into frozen dataclasses, with ROBOT_<SECTION>_<KEY> overrides and secrets.

Nothing here runs at import time; `load_settings` is called by the command line and by SIGHUP.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import importlib.util
import ipaddress
import os
import pwd
import re
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from robot.errors import ConfigError

SECURITY_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
ACCOUNT_NAME = re.compile(r"^[a-z0-9_-]+$")
DEFAULT_PATHS = (Path("robot.ini"), Path("/etc/email-robot/robot.ini"))

# Published submission settings of widely used providers: host, port, security, app password.
PRESETS: dict[str, tuple[str, int, str, bool]] = {
    "gmail": ("smtp.gmail.com", 587, "starttls", True),
    "outlook": ("smtp-mail.outlook.com", 587, "starttls", False),
    "office365": ("smtp.office365.com", 587, "starttls", False),
    "yahoo": ("smtp.mail.yahoo.com", 465, "ssl", True),
    "icloud": ("smtp.mail.me.com", 587, "starttls", True),
    "fastmail": ("smtp.fastmail.com", 465, "ssl", True),
    "zoho": ("smtp.zoho.com", 465, "ssl", False),
    "sendgrid": ("smtp.sendgrid.net", 587, "starttls", False),
    "mailgun": ("smtp.mailgun.org", 587, "starttls", False),
    "ses-eu-west-1": ("email-smtp.eu-west-1.amazonaws.com", 587, "starttls", False),
    "ses-us-east-1": ("email-smtp.us-east-1.amazonaws.com", 587, "starttls", False),
}


@dataclass(frozen=True)
class DatabaseSettings:
    """[database]: where the outbox lives."""

    url: str = "sqlite:///robot.db"


@dataclass(frozen=True)
class RobotSettings:
    """[robot]: pacing of the queue."""

    name: str = ""
    grace_minutes: float = 5.0
    poll_seconds: float = 5.0
    batch_size: int = 100
    connections: int = 4
    rate: float = 0.0
    retry_minutes: float = 10.0
    max_errors: int = 10
    lease_seconds: float = 300.0
    retention_days: float = 30.0
    max_body_mb: float = 10.0
    template_seconds: float = 5.0  # a row's templates taking longer to render fail the row
    uvloop: bool = True  # run on uvloop when it is installed (it is a dependency on Linux)
    processes: int = 1  # sending processes; connections and batch_size are split among them
    redirect_to: str | None = None  # staging: every message goes to this address instead


@dataclass(frozen=True)
class SmtpSettings:
    """[smtp] (and the SMTP keys of an [account:NAME]): how to reach the server."""

    preset: str | None = None
    host: str = "localhost"
    port: int | None = None
    security: str = "starttls"
    verify_tls: bool = True
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    allow_insecure_auth: bool = False
    helo_name: str | None = None
    timeout_seconds: float = 30.0
    # The reply to the end of a message: RFC 5321 §4.5.3.2.6 gives it 10 minutes (a server
    # may scan the message first); given up on sooner, a message accepted later is sent twice.
    data_timeout_seconds: float = 600.0
    max_per_connection: int = 100
    rate: float = 0.0
    direct: bool = False
    dns_servers: str | None = None
    dns_port: int = 53
    direct_port: int = 25


@dataclass(frozen=True)
class SenderSettings:
    """[sender] (and the sender keys of an [account:NAME]): who the mail is from."""

    address: str = ""
    name: str | None = None
    reply_to: str | None = None
    footer_text: str | None = None
    footer_html: str | None = None
    list_unsubscribe: str | None = None
    allow_row_sender: bool = True
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_key_file: str | None = None


@dataclass(frozen=True)
class AttachmentSettings:
    """[attachments]: whether rows may carry files, and how large."""

    allowed: bool = True
    max_mb: float = 10.0


@dataclass(frozen=True)
class BounceSettings:
    """[bounces]: VERP envelope and the mailbox where DSNs arrive."""

    verp: bool = False
    verp_domain: str | None = None
    mailbox: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    poll_seconds: float = 60.0
    ca_file: str | None = None
    processed_folder: str | None = None

    def read_password(self) -> str | None:
        """The mailbox password: set directly (ROBOT_BOUNCES_PASSWORD), else password_file,
        else the systemd credential `bounces_password`.

        Read anew at every call so that a rotated password_file is picked up.
        Raises ConfigError when password_file is set but unreadable.
        """
        if self.password:
            return self.password
        if self.password_file:
            return _read_secret(Path(self.password_file), "bounces")
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / "bounces_password").is_file():
            return _read_secret(Path(creds) / "bounces_password", "bounces")
        return None


@dataclass(frozen=True)
class LogSettings:
    """[log]: structlog output."""

    format: str = "console"
    level: str = "info"


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: Prometheus endpoint."""

    listen: str | None = None


@dataclass(frozen=True)
class WebSettings:
    """[web]: the operators' console (`email-robot web`)."""

    listen: str = "127.0.0.1:8025"
    session_secret_file: str | None = None
    trusted_proxies: str | None = None  # addresses whose X-Forwarded-For/-Proto are believed

    @property
    def host_port(self) -> tuple[str, int]:
        """`listen` split into host and port (checked when the settings are read)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Account:
    """A sender account: the default one ([smtp] + [sender]) or an [account:NAME]."""

    name: str
    smtp: SmtpSettings
    sender: SenderSettings
    credential: str  # file name looked up in $CREDENTIALS_DIRECTORY

    @property
    def port(self) -> int:
        """The configured port, else the usual one for the security mode."""
        return self.smtp.port or SECURITY_PORTS[self.smtp.security]

    @property
    def helo_name(self) -> str:
        """The EHLO name: configured, else this machine's FQDN."""
        return self.smtp.helo_name or socket.getfqdn()

    @property
    def needs_app_password(self) -> bool:
        """True when the preset's provider wants an app password rather than the account's."""
        return bool(self.smtp.preset and PRESETS[self.smtp.preset][3])

    def read_password(self) -> str | None:
        """The SMTP password: set directly, else password_file, else a systemd credential.

        Read anew at every call so that a rotated password_file is picked up.
        Raises ConfigError when password_file is set but unreadable.
        """
        if self.smtp.password:
            return self.smtp.password
        if self.smtp.password_file:
            return _read_secret(Path(self.smtp.password_file), self.name)
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / self.credential).is_file():
            return _read_secret(Path(creds) / self.credential, self.name)
        return None


@dataclass(frozen=True)
class Settings:
    """The whole of robot.ini, typed."""

    path: str
    database: DatabaseSettings
    robot: RobotSettings
    smtp: SmtpSettings
    sender: SenderSettings
    attachments: AttachmentSettings
    bounces: BounceSettings
    log: LogSettings
    metrics: MetricsSettings
    web: WebSettings
    accounts: Mapping[str, Account]  # "default" plus every [account:NAME]

    @property
    def default_account(self) -> Account:
        """The account of rows whose `account` is NULL."""
        return self.accounts["default"]

    @property
    def robot_name(self) -> str:
        """The name this robot writes into claimed_by."""
        return self.robot.name or socket.gethostname()


SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "robot": RobotSettings,
    "smtp": SmtpSettings,
    "sender": SenderSettings,
    "attachments": AttachmentSettings,
    "bounces": BounceSettings,
    "log": LogSettings,
    "metrics": MetricsSettings,
    "web": WebSettings,
}
ACCOUNT_KEYS = {f.name for f in dataclasses.fields(SmtpSettings)} | {
    f.name for f in dataclasses.fields(SenderSettings)
}
LOGIN_KEYS = {"username", "password", "password_file"}
ENV_PREFIX = "ROBOT_"
RawConfig = dict[str, dict[str, str]]


def find_config(explicit: str | None) -> Path:
    """The robot.ini to use: -c, else $ROBOT_CONFIG, else ./robot.ini, else /etc/email-robot."""
    if explicit:
        return Path(explicit)
    if os.environ.get("ROBOT_CONFIG"):
        return Path(os.environ["ROBOT_CONFIG"])
    for candidate in DEFAULT_PATHS:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "no robot.ini found: pass -c PATH or set ROBOT_CONFIG "
        "(looked in ./robot.ini and /etc/email-robot/robot.ini)"
    )


def sample_ini() -> str:
    """The commented sample robot.ini: packaged in the wheel as robot/sample.ini, or the
    repository's robot.ini when running from a checkout."""
    package = Path(__file__).resolve().parent  # robot/
    packaged = package / "sample.ini"
    return (packaged if packaged.is_file() else package.parent / "robot.ini").read_text()


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read robot.ini at `path`, apply the environment, validate. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    raw = _read_ini(path)
    _apply_environment(raw, environ, str(path))
    return _build(raw, str(path))


def _read_ini(path: Path) -> RawConfig:
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        with path.open(encoding="utf-8-sig") as handle:  # a BOM (Windows editors) is fine
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not a valid ini file: {first_line}") from None
    return {section: dict(parser[section]) for section in parser.sections()}


class FromEnvironment(str):
    """A value that came from an environment variable: an error about it names the variable,
    not robot.ini."""

    variable: str

    @classmethod
    def of(cls, value: str, variable: str) -> FromEnvironment:
        text = cls(value)
        text.variable = variable
        return text


def _apply_environment(raw: RawConfig, environ: Mapping[str, str], path: str) -> None:
    """Overlay ROBOT_<SECTION>_<KEY> (and ROBOT_ACCOUNT_<NAME>_<KEY>) onto the file's values."""
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable == "ROBOT_CONFIG":
            continue
        rest = variable[len(ENV_PREFIX) :].lower()
        if rest.startswith("account_"):
            section, key = _account_variable(rest[len("account_") :], raw, variable, path)
            raw.setdefault(section, {})[key] = FromEnvironment.of(value, variable)
            continue
        for section in SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                if key not in _keys(SECTIONS[section]):
                    raise ConfigError(
                        f"{variable}: unknown key '{key}' in section [{section}]",
                        key=f"{section}.{key}",
                        path=path,
                    )
                raw.setdefault(section, {})[key] = FromEnvironment.of(value, variable)
                break


def _account_variable(rest: str, raw: RawConfig, variable: str, path: str) -> tuple[str, str]:
    """Split 'name_with_parts_key' of ROBOT_ACCOUNT_* into ([account:name], key)."""
    for key in sorted(ACCOUNT_KEYS, key=len, reverse=True):
        if rest.endswith("_" + key):
            env_name = rest[: -len(key) - 1]
            for section in raw:
                if section.startswith("account:") and _env_form(section[8:]) == env_name:
                    return section, key
            return f"account:{env_name}", key
    raise ConfigError(f"{variable}: no known account key at its end", path=path)


def _env_form(name: str) -> str:
    return name.lower().replace("-", "_")


def _keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build(raw: RawConfig, path: str) -> Settings:
    for section in raw:
        if section not in SECTIONS and not section.startswith("account:"):
            raise ConfigError(f"{path}: unknown section [{section}]", path=path)
    _files_from_the_ini_folder(raw, path)
    parts: dict[str, typing.Any] = {
        name: _section(cls, raw.get(name, {}), name, path) for name, cls in SECTIONS.items()
    }
    parts["database"] = DatabaseSettings(url=database_url(parts["database"].url, path))
    smtp = _with_preset(parts["smtp"], raw.get("smtp", {}).keys(), "smtp", path)
    sender: SenderSettings = parts["sender"]
    _check_smtp(smtp, "smtp", path)
    if not sender.address:
        raise ConfigError(f"{path}: [sender] address is required", key="sender.address", path=path)
    accounts = {"default": Account("default", smtp, sender, "smtp_password")}
    for section, values in raw.items():
        if section.startswith("account:"):
            accounts[section[8:]] = _account(section, values, raw, path)
    _check_ranges(parts, path)
    parts["bounces"] = _checked_bounces(parts["bounces"], path)
    for account in accounts.values():
        _check_list_unsubscribe(account, path)
    return Settings(
        path=path,
        smtp=smtp,
        accounts=accounts,
        **{name: value for name, value in parts.items() if name != "smtp"},
    )


def _files_from_the_ini_folder(raw: RawConfig, path: str) -> None:
    """A relative path in a `*_file` key (password_file, ca_file, dkim_key_file, ...) is taken
    from robot.ini's folder, as a relative SQLite path is: the service (in its state
    directory) and an admin's command (anywhere) must read the same file."""
    if not path:
        return
    folder = Path(path).resolve().parent
    for values in raw.values():
        for key, value in values.items():
            if key.endswith("_file") and value.strip() and not Path(value).is_absolute():
                resolved = str(folder / value.strip())
                if isinstance(value, FromEnvironment):
                    values[key] = FromEnvironment.of(resolved, value.variable)
                else:
                    values[key] = resolved


def _account(section: str, values: dict[str, str], raw: RawConfig, path: str) -> Account:
    name = section[len("account:") :]
    if not ACCOUNT_NAME.match(name) or name == "default":
        raise ConfigError(
            f"{path}: [{section}]: account names are lower-case letters, digits, - and _ "
            "(and not 'default')",
            path=path,
        )
    for key in values:
        if key not in ACCOUNT_KEYS:
            raise ConfigError(f"{path}: [{section}] {key}: unknown key", key=key, path=path)
    smtp_keys, sender_keys = _keys(SmtpSettings), _keys(SenderSettings)
    inherited_smtp = dict(raw.get("smtp", {}))
    if "preset" in values:  # an account's own preset replaces the inherited server
        for key in ("host", "port", "security"):
            inherited_smtp.pop(key, None)
    if LOGIN_KEYS & values.keys():  # an account with a login of its own inherits none of ours
        for key in LOGIN_KEYS:
            inherited_smtp.pop(key, None)
    smtp_raw = inherited_smtp | {k: v for k, v in values.items() if k in smtp_keys}
    sender_raw = raw.get("sender", {}) | {k: v for k, v in values.items() if k in sender_keys}
    smtp = _with_preset(
        _section(SmtpSettings, smtp_raw, section, path), smtp_raw.keys(), section, path
    )
    _check_smtp(smtp, section, path)
    sender = _section(SenderSettings, sender_raw, section, path)
    if not sender.address:
        raise ConfigError(f"{path}: [{section}] address is required", key="address", path=path)
    return Account(name, smtp, sender, f"account_{_env_form(name)}_password")


def _with_preset(
    smtp: SmtpSettings, explicit: typing.Iterable[str], section: str, path: str
) -> SmtpSettings:
    """Fill host, port and security from the preset, except the keys set explicitly."""
    if smtp.preset is None:
        return smtp
    if smtp.preset not in PRESETS:
        raise ConfigError(
            f"{path}: [{section}] preset: unknown preset '{smtp.preset}' "
            f"(known: {', '.join(sorted(PRESETS))})",
            key="preset",
            path=path,
        )
    host, port, security, _ = PRESETS[smtp.preset]
    given = set(explicit)
    return dataclasses.replace(
        smtp,
        host=smtp.host if "host" in given else host,
        port=smtp.port if "port" in given else port,
        security=smtp.security if "security" in given else security,
    )


def _check_smtp(smtp: SmtpSettings, section: str, path: str) -> None:
    if smtp.security not in SECURITY_PORTS:
        raise ConfigError(
            f"{path}: [{section}] security: must be starttls, ssl or none, not '{smtp.security}'",
            key="security",
            path=path,
        )
    if smtp.max_per_connection < 1:
        raise ConfigError(
            f"{path}: [{section}] max_per_connection: must be at least 1",
            key="max_per_connection",
            path=path,
        )
    for key in ("timeout_seconds", "data_timeout_seconds"):
        if getattr(smtp, key) <= 0:
            raise ConfigError(f"{path}: [{section}] {key}: must be positive", key=key, path=path)
    if smtp.password_file and not Path(smtp.password_file).is_file():
        raise ConfigError(
            f"{path}: [{section}] password_file: {smtp.password_file} is not a readable file",
            key="password_file",
            path=path,
        )
    _check_direct(smtp, section, path)


def _check_direct(smtp: SmtpSettings, section: str, path: str) -> None:
    """dns_servers: comma-separated IP addresses; dns_port and direct_port: TCP/UDP ports."""
    for key in ("dns_port", "direct_port"):
        if not 0 < getattr(smtp, key) < 65536:
            raise ConfigError(
                f"{path}: [{section}] {key}: must be a port (1-65535)", key=key, path=path
            )
    for server in (smtp.dns_servers or "").split(","):
        try:
            if server.strip():
                ipaddress.ip_address(server.strip())
        except ValueError:
            raise ConfigError(
                f"{path}: [{section}] dns_servers: {server.strip()!r} is not an IP address "
                "(comma-separated IP addresses)",
                key="dns_servers",
                path=path,
            ) from None


def _check_list_unsubscribe(account: Account, path: str) -> None:
    """Each comma-separated target must be an https or mailto URL (RFC 8058)."""
    value = account.sender.list_unsubscribe
    if value is None:
        return
    section = "sender" if account.name == "default" else f"account:{account.name}"
    targets = [t.strip() for t in value.split(",") if t.strip()]
    if not targets or any(not t.startswith(("https://", "mailto:")) for t in targets):
        raise ConfigError(
            f"{path}: [{section}] list_unsubscribe: give https:// or mailto: URLs, comma-separated",
            key="list_unsubscribe",
            path=path,
        )


def _check_ranges(parts: dict[str, typing.Any], path: str) -> None:
    robot: RobotSettings = parts["robot"]
    checks = [
        ("robot", "batch_size", robot.batch_size >= 1, "must be at least 1"),
        ("robot", "connections", robot.connections >= 1, "must be at least 1"),
        ("robot", "poll_seconds", robot.poll_seconds > 0, "must be positive"),
        ("robot", "lease_seconds", robot.lease_seconds >= 10, "must be at least 10"),
        ("robot", "max_errors", robot.max_errors >= 1, "must be at least 1"),
        ("robot", "processes", 1 <= robot.processes <= 64, "must be between 1 and 64"),
        (
            "robot",
            "processes",
            robot.processes <= robot.connections,
            "must not be more than connections",
        ),
        ("robot", "grace_minutes", robot.grace_minutes >= 0, "must not be negative"),
        ("robot", "retry_minutes", robot.retry_minutes >= 0, "must not be negative"),
        ("robot", "rate", 0 <= robot.rate <= 10000, "must be between 0 and 10000"),
        ("robot", "retention_days", robot.retention_days >= 0, "must not be negative"),
        ("robot", "max_body_mb", 0 < robot.max_body_mb <= 100, "must be in (0, 100]"),
        ("robot", "template_seconds", 0 < robot.template_seconds <= 300, "must be in (0, 300]"),
        ("attachments", "max_mb", 0 < parts["attachments"].max_mb <= 100, "must be in (0, 100]"),
        ("log", "format", parts["log"].format in ("json", "console"), "must be json or console"),
        (
            "log",
            "level",
            parts["log"].level.lower() in ("debug", "info", "warning", "error", "critical"),
            "must be debug, info, warning, error or critical",
        ),
    ]
    if robot.redirect_to is not None:
        ok = bool(ONE_ADDRESS.fullmatch(robot.redirect_to))
        checks.append(("robot", "redirect_to", ok, "must be one address, like qa@example.org"))
    web: WebSettings = parts["web"]
    checks.append(("web", "listen", _is_host_port(web.listen), "must be HOST:PORT"))
    for section, key, ok, problem in checks:
        if not ok:
            raise ConfigError(f"{path}: [{section}] {key}: {problem}", key=key, path=path)


def _is_host_port(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def _checked_bounces(bounces: BounceSettings, path: str) -> BounceSettings:
    """The [bounces] settings, checked; verp_domain in its ASCII (IDNA) form, as the
    envelope sender must be written without SMTPUTF8."""
    if bounces.poll_seconds <= 0:
        raise ConfigError(
            f"{path}: [bounces] poll_seconds: must be positive", key="poll_seconds", path=path
        )
    if bounces.mailbox:
        parse_mailbox_url(bounces.mailbox, path)
    if bounces.password_file:
        _check_bounces_password_file(bounces.password_file, path)
    if not bounces.verp_domain:
        return bounces
    domain = bounces.verp_domain.strip()
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_domain = ""
    if not VERP_DOMAIN.fullmatch(ascii_domain):
        raise ConfigError(
            f"{path}: [bounces] verp_domain: not a domain name: {domain!r}",
            key="verp_domain",
            path=path,
        )
    return dataclasses.replace(bounces, verp_domain=ascii_domain.lower())


def _check_bounces_password_file(file: str, path: str) -> None:
    """[bounces] password_file: a file that can be read and holds a password."""
    where = f"{path}: [bounces] password_file: {file}"
    try:
        secret = Path(file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        problem = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(
            f"{where} is not a readable file ({problem})", key="password_file", path=path
        ) from None
    if not secret:
        raise ConfigError(f"{where} is empty", key="password_file", path=path)


def _anchored_sqlite(parsed: URL, path: str) -> str:
    """A relative SQLite path is taken from robot.ini's folder, never from whatever folder
    a command happens to run in."""
    database = parsed.database
    if database and database != ":memory:" and not Path(database).is_absolute() and path:
        parsed = parsed.set(database=str(Path(path).resolve().parent / database))
    return parsed.render_as_string(hide_password=False)


# The drivers the robot ships with, by database; every other spelling of these databases is
# rewritten to them or refused with what to write instead.
SUPPORTED_URLS = (
    "sqlite:///PATH, postgresql://USER@HOST/DB or mysql://USER@HOST/DB (MariaDB, MySQL)"
)
MYSQL_BACKENDS = ("mysql", "mariadb")
MYSQL_URL = "mysql+pymysql"  # MariaDB too: the dialect tells the servers apart when it connects


def database_url(url: str, path: str) -> str:
    """`[database] url` as the robot uses it: `postgres://` (what Heroku-style platforms hand
    out) and `postgresql://` become psycopg 3's `postgresql+psycopg://`; `mysql://`,
    `mariadb://` and `mysql+pymysql://` become PyMySQL's `mysql+pymysql://` with the
    character set utf8mb4. Raises ConfigError, naming the key and what to write, for
    anything else than SQLite, PostgreSQL with psycopg 3, or MariaDB/MySQL with PyMySQL."""

    def refuse(problem: str) -> ConfigError:
        return ConfigError(
            f"{path}: [database] url: {problem}; write {SUPPORTED_URLS}", key="url", path=path
        )

    url = url.strip()
    for alias in ("postgres://", "postgresql://"):
        if url.startswith(alias):
            url = "postgresql+psycopg://" + url[len(alias) :]
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise refuse(f"not a database URL: {url!r}") from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver == "pysqlite":
        return _anchored_sqlite(parsed, path)
    if backend == "postgresql" and driver == "psycopg":
        return url
    if backend == "postgresql":
        raise refuse(f"the driver {driver!r} is not installed with email-robot (psycopg 3 is)")
    if backend in MYSQL_BACKENDS:
        # `mysql://` alone means mysqlclient (MySQLdb) to SQLAlchemy: the robot means PyMySQL.
        given = url.split("://", 1)[0]
        if "+" in given and driver != "pymysql":
            raise refuse(
                f"the driver {driver!r} is not installed with email-robot (PyMySQL is: "
                "mysql+pymysql://)"
            )
        if importlib.util.find_spec("pymysql") is None:
            raise refuse("the MariaDB/MySQL driver PyMySQL is not installed (pip install PyMySQL)")
        if not parsed.database:
            raise refuse("no database name after the host")
        query = {k: v for k, v in parsed.query.items() if k != "charset"}
        parsed = parsed.set(drivername=MYSQL_URL, query={**query, "charset": "utf8mb4"})
        return parsed.render_as_string(hide_password=False)
    raise refuse(f"{backend!r} databases are not supported")


T = typing.TypeVar("T")
# One bare address (no display name, no list): [robot] redirect_to.
ONE_ADDRESS = re.compile(r"[^\s@,;<>()\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
VERP_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _section(cls: type[T], values: Mapping[str, str], section: str, path: str) -> T:
    """Build the dataclass `cls` from raw strings, converting each by its annotation."""
    hints = typing.get_type_hints(cls)
    known = _keys(cls)
    kwargs: dict[str, object] = {}
    for key, text in values.items():
        if key not in known:
            if section.startswith("account:") and key in ACCOUNT_KEYS:
                continue
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"{path}: [{section}] {key}: unknown key{hint}", key=key, path=path)
        where = (
            f"{text.variable} (from the environment)"
            if isinstance(text, FromEnvironment)
            else f"{path}: [{section}] {key}"
        )
        kwargs[key] = _convert(hints[key], text.strip(), where, key, path)
    return cls(**kwargs)


def _convert(hint: object, text: str, where: str, key: str, path: str) -> object:
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if optional and text == "":
        return None
    try:
        if base is bool:
            return _boolean(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[base]  # type: ignore[index]
        raise ConfigError(f"{where}: expected {kind}, got {text!r}", key=key, path=path) from None
    return text


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _read_secret(path: Path, account: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        # Name the user: a file only root can read is the usual mistake (the service runs as
        # email-robot), and the line must say so to whoever runs check or reads the journal.
        raise ConfigError(
            f"password file of account {account} unreadable: {path}: {exc.strerror} "
            f"(read as user {_user_name()})",
            key="password_file",
        ) from None


def _user_name() -> str:
    """The effective user's name, from the user database (never from $USER)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


IMAP_PORTS = {"imaps": 993, "imap": 143}


@dataclass(frozen=True)
class MailboxUrl:
    """`imaps://user@host:993/INBOX`, parsed. It never holds the password."""

    scheme: str
    user: str
    host: str
    port: int
    folder: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = quote(self.user, safe="@")
        return f"{self.scheme}://{user}@{host}:{self.port}/{quote(self.folder, safe='/')}"


def parse_mailbox_url(url: str, path: str = "") -> MailboxUrl:
    """Read `[bounces] mailbox`. Raises ConfigError naming what is wrong with it."""

    def refuse(problem: str) -> ConfigError:
        where = f"{path}: " if path else ""
        return ConfigError(f"{where}[bounces] mailbox: {problem}", key="mailbox", path=path)

    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in IMAP_PORTS:
        raise refuse(f"must start with imaps:// or imap://, not {url!r}")
    if parts.password is not None:
        raise refuse("no password in the URL: use password_file or ROBOT_BOUNCES_PASSWORD")
    if not parts.username:
        raise refuse("no user name: write imaps://user@host/INBOX")
    if not parts.hostname:
        raise refuse("no host name")
    try:
        port = parts.port or IMAP_PORTS[scheme]
    except ValueError:
        raise refuse("the port is not a number between 1 and 65535") from None
    if parts.query or parts.fragment:
        raise refuse("no ?query or #fragment is understood")
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    return MailboxUrl(scheme, unquote(parts.username), parts.hostname, port, folder)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
