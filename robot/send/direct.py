"""Direct delivery, without a relay: each recipient domain's mail hosts from DNS (RFC 5321
§5.1, RFC 7505 null MX), then one SMTP transaction per domain over a DirectConnection.

The only module that asks DNS. It returns one Attempt for all the domains: the recipients
whose mail host took the message, and every refusal. When DNS says a domain takes no mail,
or none of its hosts can be reached, the robot words the refusal itself (`by_robot`), with
the enhanced status code an MTA would use (5.4.4, 5.1.10, 4.4.3), so that robot.outcome
judges it like any server's reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from robot.compose.message import Composed
from robot.config import Account
from robot.errors import TransportFault
from robot.send.attempt import Attempt, Refusal, Reply, SmtpCode, Stage
from robot.send.relay import DirectConnection

MAX_ADDRESSES = 5  # addresses tried per domain and attempt (Postfix: smtp_mx_address_limit)
_SHUFFLE = random.Random()


@dataclass(frozen=True)
class MailHost:
    """One host to try for a domain: an MX target, or the domain itself (implicit MX)."""

    name: str
    addresses: tuple[str, ...] | None = None  # None: look up A/AAAA when its turn comes


class _NoRoute(Exception):
    """DNS says, for good, that the domain takes no mail (internal to this module). `text`
    starts with its enhanced status code; `code` is 550, or 556 for a null MX."""

    def __init__(self, text: str, *, code: int = SmtpCode.UNROUTABLE) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


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
        raise _NoRoute("5.1.3 the address has no domain")
    literal = address_literal(domain)
    if literal is not None:
        return [MailHost(domain, (literal,))]
    try:
        name = dns.name.from_text(domain)
    except dns.exception.DNSException as exc:
        raise _NoRoute(f"5.4.4 {domain!r} is not a valid domain name ({exc})") from None
    try:
        answer = await resolver.resolve(name, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        raise _NoRoute(f"5.4.4 domain {domain} does not exist (NXDOMAIN)") from None
    except dns.resolver.NoAnswer:
        # RFC 5321 §5.1: no MX, so the domain itself is the mail host (its A/AAAA).
        addresses = await host_addresses(resolver, domain)
        if not addresses:
            raise _NoRoute(
                f"5.4.4 domain {domain} has neither an MX nor an address record"
            ) from None
        return [MailHost(domain, tuple(addresses))]
    records = [(rdata.preference, rdata.exchange.to_text()) for rdata in answer]
    if is_null_mx(records):
        raise _NoRoute(
            f"5.1.10 domain {domain} accepts no mail (null MX, RFC 7505)", code=SmtpCode.NULL_MX
        )
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


async def deliver(account: Account, message: Composed, log: Any) -> Attempt:
    """Send `message` straight to each recipient domain's mail host, the domains at once.

    Never raises for a domain's trouble: every recipient ends accepted or refused.
    """
    groups = group_by_domain(message.recipients)
    smtp = account.smtp
    try:
        resolver = resolver_for(smtp.dns_servers, smtp.dns_port, smtp.timeout_seconds)
    except (dns.exception.DNSException, ValueError) as exc:
        reply = _robot_reply(SmtpCode.TEMPORARY_LOCAL_ERROR, f"4.3.5 no DNS resolver: {exc}")
        return _refused(message.recipients, reply)
    results = await asyncio.gather(
        *(
            deliver_domain(account, message, domain, recipients, resolver, log)
            for domain, recipients in groups.items()
        )
    )
    attempt = Attempt()
    for result in results:
        attempt = attempt.merged(result)
    return attempt


async def deliver_domain(
    account: Account,
    message: Composed,
    domain: str,
    recipients: tuple[str, ...],
    resolver: dns.asyncresolver.Resolver,
    log: Any,
) -> Attempt:
    """One SMTP transaction for the `recipients` of `domain`, on the first of its mail hosts
    that takes it. A host that cannot be reached, or answers other than 2xx to the greeting
    or EHLO, or closes (421, a dropped connection) before DATA, is skipped for the next; when
    every host was skipped the recipients are deferred."""
    try:
        hosts = await mail_hosts(resolver, domain)
    except _NoRoute as exc:
        return _refused(recipients, _robot_reply(exc.code, exc.text))
    except dns.exception.DNSException as exc:
        text = f"4.4.3 {_dns_trouble(exc)} looking up MX of {domain}"
        return _refused(recipients, _robot_reply(SmtpCode.TEMPORARY_LOCAL_ERROR, text))
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
            except TransportFault as exc:  # unreachable, 4xx/5xx greeting or EHLO
                skipped.append(str(exc))
                continue
            try:
                attempt, before_data = await connection.send(envelope)
            finally:
                await connection.close()
            if attempt.fault is not None:  # 530: this host wants what an MTA cannot give
                skipped.append(attempt.fault)
                continue
            gone = _gone_before_data(attempt, before_data)
            if gone is not None:
                skipped.append(f"{connection.where}: {gone}")
                continue
            log.info(
                "direct.domain",
                domain=domain,
                host=connection.where,
                tls=connection.tls.value,
                accepted=len(attempt.accepted),
                refused=len(attempt.refusals),
                skipped=skipped,
            )
            return dataclasses.replace(attempt, hosts=(connection.where,))
    why = "; ".join(skipped) if skipped else "no mail host to try"
    text = f"4.4.1 no mail host of {domain} took the message: {why}"
    log.info("direct.domain", domain=domain, host=None, accepted=0, skipped=skipped)
    return _refused(recipients, _robot_reply(SmtpCode.TEMPORARY_LOCAL_ERROR, text))


def _gone_before_data(attempt: Attempt, before_data: bool) -> str | None:
    """Why the host went away before DATA (silence or 421), so that the next is tried."""
    ending = next((r for r in attempt.refusals if r.ended), None)
    if ending is None or attempt.accepted:
        return None
    early = before_data or ending.reply.stage is not Stage.DATA
    if early and ending.reply.code in (None, SmtpCode.SERVICE_CLOSING):
        return ending.reply.line()
    return None


def _robot_reply(code: int, text: str) -> Reply:
    """A refusal the robot words itself, at RCPT, since no server could be asked."""
    return Reply(code, text, Stage.RCPT, by_robot=True)


def _refused(recipients: tuple[str, ...], reply: Reply) -> Attempt:
    """Each recipient refused on its own by one reply of the robot's (DNS, no host)."""
    return Attempt(refusals=tuple(Refusal((r,), reply, r, ended=True) for r in recipients))
