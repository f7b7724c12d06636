"""Direct delivery, without a relay: each recipient domain's mail hosts from DNS (RFC 5321
§5.1, RFC 7505 null MX), then one SMTP transaction per domain over a DirectConnection.

The only module that asks DNS. What it returns says, per recipient, whether the mail was
accepted and, if not, what that means (deferred, bounced, failed); the daemon records it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from robot.compose.message import Composed
from robot.config import Account
from robot.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransportFault,
)
from robot.outcome.replies import Outcome, Reply, Stage, classify, suppresses
from robot.send.relay import DirectConnection, TlsUse

MAX_ADDRESSES = 5  # addresses tried per domain and attempt (Postfix: smtp_mx_address_limit)
SERVICE_CLOSING = 421
_SHUFFLE = random.Random()


@dataclass(frozen=True)
class Refusal:
    """A recipient the message did not reach, and what that means for it."""

    recipient: str
    outcome: Outcome  # DEFERRED, BOUNCED or FAILED
    reply: str  # the server's text, or why no server could be asked
    code: int | None = None  # the SMTP code; None when no server said it (DNS, timeouts)
    stage: Stage | None = None  # None when no server said it
    suppress: bool = False  # the address is bad for good: add it to the suppression list

    @property
    def detail(self) -> str:
        """'bob@example.org: 550 5.1.1 No such user', as the history records refusals."""
        if self.code is None:
            return f"{self.recipient}: {self.reply}"
        return f"{self.recipient}: {self.code} {self.reply}"

    @property
    def reason(self) -> str:
        """'bob@example.org: 550 5.1.1 No such user (at RCPT)', for last_error."""
        if self.stage is None:
            return self.detail
        return f"{self.recipient}: {Reply(self.code, self.reply, self.stage).describe()}"


@dataclass(frozen=True)
class DomainResult:
    """How the message went to one recipient domain."""

    domain: str
    recipients: tuple[str, ...]
    accepted: tuple[str, ...] = ()
    code: int | None = None  # the DATA reply, when some recipient was accepted
    reply: str = ""
    refusals: tuple[Refusal, ...] = ()
    host: str | None = None  # the mail host that answered: 'mx.example.org[192.0.2.1]:25'
    tls: TlsUse = TlsUse.NONE
    skipped: tuple[str, ...] = ()  # mail hosts that could not take it, each with the reason


@dataclass(frozen=True)
class DirectResult:
    """How the message went to all its recipient domains."""

    domains: tuple[DomainResult, ...]

    @property
    def accepted(self) -> tuple[str, ...]:
        """Every recipient whose mail host accepted the message."""
        return tuple(r for d in self.domains for r in d.accepted)

    @property
    def refusals(self) -> tuple[Refusal, ...]:
        """Every recipient the message did not reach."""
        return tuple(r for d in self.domains for r in d.refusals)

    @property
    def first_accepted(self) -> DomainResult | None:
        """The first domain that accepted the message: its DATA reply is the row's."""
        return next((d for d in self.domains if d.accepted), None)

    def decisive(self) -> Refusal:
        """When no recipient was accepted, the refusal that decides the row, as for a relay:
        any that may change defers it; else one at MAIL or DATA fails it; else it bounces."""
        refusals = self.refusals
        for outcome in (Outcome.DEFERRED, Outcome.FAILED, Outcome.BOUNCED):
            for refusal in refusals:
                if refusal.outcome is outcome:
                    return refusal
        raise ValueError("no refusal to decide on")


@dataclass(frozen=True)
class MailHost:
    """One host to try for a domain: an MX target, or the domain itself (implicit MX)."""

    name: str
    addresses: tuple[str, ...] | None = None  # None: look up A/AAAA when its turn comes


class _NoRoute(Exception):
    """DNS says, for good, that the domain takes no mail (internal to this module)."""

    def __init__(self, text: str, *, suppress: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.suppress = suppress


# -- pure parts ---------------------------------------------------------------------------


def group_by_domain(recipients: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The recipients by lower-cased domain, domains and addresses in first-seen order.

    An address is kept as it was given; one without '@' gets the domain ''.
    """
    groups: dict[str, list[str]] = {}
    for recipient in recipients:
        domain = recipient.rpartition("@")[2].strip().lower() if "@" in recipient else ""
        groups.setdefault(domain, []).append(recipient)
    return {domain: tuple(addresses) for domain, addresses in groups.items()}


def is_null_mx(records: Sequence[tuple[int, str]]) -> bool:
    """True for RFC 7505's null MX: the domain's only MX target is '.' (it takes no mail)."""
    return bool(records) and all(_is_root(host) for _, host in records)


def order_mx(records: Iterable[tuple[int, str]], rng: random.Random | None = None) -> list[str]:
    """MX target names by preference, lowest first; equal preferences in random order, to
    spread the load (RFC 5321 §5.1). Names lower-cased without the final dot, each once; a
    '.' target is left out."""
    by_preference: dict[int, list[str]] = {}
    for preference, host in records:
        if not _is_root(host):
            by_preference.setdefault(preference, []).append(host.rstrip(".").lower())
    hosts: list[str] = []
    for preference in sorted(by_preference):
        group = by_preference[preference]
        (rng or _SHUFFLE).shuffle(group)
        hosts.extend(host for host in group if host not in hosts)
    return hosts


def address_literal(domain: str) -> str | None:
    """The IP address of a domain literal ('[192.0.2.1]', '[IPv6:2001:db8::1]'), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _is_root(host: str) -> bool:
    return host.strip() in (".", "")


# -- DNS ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def resolver_for(
    dns_servers: str | None, dns_port: int, lifetime: float
) -> dns.asyncresolver.Resolver:
    """A resolver, with a cache that honours the records' TTLs, per DNS set-up.

    dns_servers: comma-separated IP addresses; None asks the system's (resolv.conf). Raises
    dns.resolver.NoResolverConfiguration when the system has none, ValueError for a server
    that is not an IP address.
    """
    if dns_servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [s.strip() for s in dns_servers.split(",") if s.strip()]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.port = dns_port
    resolver.lifetime = lifetime
    resolver.cache = dns.resolver.Cache()
    return resolver


async def mail_hosts(resolver: dns.asyncresolver.Resolver, domain: str) -> list[MailHost]:
    """The hosts to try for `domain`, in order: its MX targets, else the domain itself.

    Raises _NoRoute when DNS says for good that the domain takes no mail (it does not exist,
    null MX, neither MX nor address), and dnspython's exceptions for trouble that may pass
    (timeout, SERVFAIL).
    """
    if not domain:
        raise _NoRoute("the address has no domain")
    literal = address_literal(domain)
    if literal is not None:
        return [MailHost(domain, (literal,))]
    try:
        name = dns.name.from_text(domain)
    except dns.exception.DNSException as exc:
        raise _NoRoute(f"{domain!r} is not a valid domain name ({exc})") from None
    try:
        answer = await resolver.resolve(name, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        raise _NoRoute(f"domain {domain} does not exist (NXDOMAIN)") from None
    except dns.resolver.NoAnswer:
        # RFC 5321 §5.1: no MX, so the domain itself is the mail host (its A/AAAA).
        addresses = await host_addresses(resolver, domain)
        if not addresses:
            raise _NoRoute(f"domain {domain} has neither an MX nor an address record") from None
        return [MailHost(domain, tuple(addresses))]
    records = [(rdata.preference, rdata.exchange.to_text()) for rdata in answer]
    if is_null_mx(records):
        raise _NoRoute(f"domain {domain} accepts no mail (null MX, RFC 7505)", suppress=True)
    return [MailHost(host) for host in order_mx(records)]


async def host_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
    """The IPv4 then IPv6 addresses of `host`; [] when it has none or does not exist.

    Raises dnspython's exceptions (timeout, SERVFAIL) when neither lookup answered.
    """
    found: list[str] = []
    failure: dns.exception.DNSException | None = None
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            failure = exc
            continue
        found.extend(rdata.address for rdata in answer if rdata.address not in found)
    if not found and failure is not None:
        raise failure
    return found


def _dns_trouble(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "DNS timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no DNS server answered (SERVFAIL or refused)"
    return f"DNS failed: {type(exc).__name__}: {exc}"


# -- delivery -----------------------------------------------------------------------------


async def deliver(account: Account, message: Composed) -> DirectResult:
    """Send `message` straight to each recipient domain's mail host, the domains at once.

    Never raises for a domain's trouble: every recipient ends accepted or refused.
    """
    groups = group_by_domain(message.recipients)
    smtp = account.smtp
    try:
        resolver = resolver_for(smtp.dns_servers, smtp.dns_port, smtp.timeout_seconds)
    except (dns.exception.DNSException, ValueError) as exc:
        text = f"no DNS resolver: {exc}"
        return DirectResult(
            tuple(
                _refused(domain, rcpts, Outcome.DEFERRED, text) for domain, rcpts in groups.items()
            )
        )
    results = await asyncio.gather(
        *(
            deliver_domain(account, message, domain, recipients, resolver)
            for domain, recipients in groups.items()
        )
    )
    return DirectResult(tuple(results))


async def deliver_domain(
    account: Account,
    message: Composed,
    domain: str,
    recipients: tuple[str, ...],
    resolver: dns.asyncresolver.Resolver,
) -> DomainResult:
    """One SMTP transaction for the `recipients` of `domain`, on the first of its mail hosts
    that takes it. A host that cannot be reached, or answers other than 2xx to the greeting
    or EHLO, or closes (421, a dropped connection) before DATA, is skipped for the next; when
    every host was skipped the recipients are deferred."""
    try:
        hosts = await mail_hosts(resolver, domain)
    except _NoRoute as exc:
        return _refused(domain, recipients, Outcome.BOUNCED, exc.text, suppress=exc.suppress)
    except dns.exception.DNSException as exc:
        return _refused(
            domain, recipients, Outcome.DEFERRED, f"{_dns_trouble(exc)} looking up MX of {domain}"
        )
    envelope = Composed(message.envelope_from, recipients, message.data, message.message_id)
    skipped: list[str] = []
    tried = 0
    for host in hosts:
        addresses = host.addresses
        if addresses is None:
            try:
                addresses = tuple(await host_addresses(resolver, host.name))
            except dns.exception.DNSException as exc:
                skipped.append(f"{host.name}: {_dns_trouble(exc)}")
                continue
            if not addresses:
                skipped.append(f"{host.name}: no address record")
                continue
        for address in addresses:
            if tried >= MAX_ADDRESSES:
                break
            tried += 1
            connection = DirectConnection(account, address, account.smtp.direct_port, host.name)
            try:
                await connection.open()
                result = await connection.send(envelope)
            except TransportFault as exc:  # unreachable, 4xx/5xx greeting or EHLO, or 530
                skipped.append(str(exc))
                continue
            except TransientDeliveryError as exc:
                gone_early = exc.before_data or exc.stage != Stage.DATA
                if gone_early and exc.code in (None, SERVICE_CLOSING):
                    skipped.append(f"{connection.where}: {exc}")  # gone before DATA
                    continue
                return _failed(domain, recipients, exc, connection, skipped)
            except PermanentDeliveryError as exc:
                return _failed(domain, recipients, exc, connection, skipped)
            finally:
                await connection.close()
            refusals = tuple(
                _refusal(address, code, text, Stage.RCPT)
                for address, (code, text) in result.refused.items()
            )
            return DomainResult(
                domain,
                recipients,
                accepted=tuple(r for r in recipients if r not in result.refused),
                code=result.code,
                reply=result.reply,
                refusals=refusals,
                host=connection.where,
                tls=connection.tls,
                skipped=tuple(skipped),
            )
    why = "; ".join(skipped) if skipped else "no mail host to try"
    return _refused(
        domain,
        recipients,
        Outcome.DEFERRED,
        f"no mail host of {domain} took the message: {why}",
        skipped=tuple(skipped),
    )


def _refusal(recipient: str, code: int, text: str, stage: Stage) -> Refusal:
    reply = Reply(code, text, stage)
    return Refusal(recipient, classify(reply), text, code, stage, suppresses(reply))


def _refused(
    domain: str,
    recipients: tuple[str, ...],
    outcome: Outcome,
    text: str,
    *,
    suppress: bool = False,
    skipped: tuple[str, ...] = (),
) -> DomainResult:
    """No server was asked, or none could be: the same verdict for every recipient."""
    refusals = tuple(Refusal(r, outcome, text, suppress=suppress) for r in recipients)
    return DomainResult(domain, recipients, refusals=refusals, skipped=skipped)


def _failed(
    domain: str,
    recipients: tuple[str, ...],
    exc: DeliveryError,
    connection: DirectConnection,
    skipped: list[str],
) -> DomainResult:
    """The mail host refused the transaction: every recipient refused (each with its own RCPT
    reply), or one reply at MAIL, DATA or a timeout for all of them."""
    if exc.refused:
        refusals = tuple(
            _refusal(address, code, text, Stage.RCPT)
            for address, (code, text) in exc.refused.items()
        )
    else:
        stage = Stage(exc.stage) if exc.stage else Stage.DATA
        reply = Reply(exc.code, exc.reply or str(exc), stage)
        outcome = classify(reply)
        bad_address = outcome is Outcome.BOUNCED and suppresses(reply)
        refusals = tuple(
            Refusal(r, outcome, reply.text, exc.code, stage, bad_address and r == exc.recipient)
            for r in recipients
        )
    return DomainResult(
        domain,
        recipients,
        refusals=refusals,
        host=connection.where,
        tls=connection.tls,
        skipped=tuple(skipped),
    )
