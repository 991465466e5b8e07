"""Sending webhooks: each delivery row is claimed, signed, posted and retried with backoff.

Called by the Celery tasks in opsconsole/tasks.py (or the embedded scheduler); the rows are
written by ``notify`` (opsconsole/notifications.py) inside the caller's transaction.

Two things a receiver must not do to the console. Hold it: one delivery gets
``OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS`` in all (httpx's timeouts are per read, so a receiver
answering one byte per second could hold one for minutes), and a sweep stops starting deliveries
before its task's time limit. Be inside it: a destination is refused when it is, or resolves to,
a loopback, link-local (cloud metadata), unspecified or, unless ``OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE``,
private address; the request then goes to the address that was checked, and redirects are not
followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from opsconsole.models import DeliveryStatus, WebhookDelivery, WebhookFormat

MAX_ATTEMPTS = 8

logger = logging.getLogger("opsconsole.notifications")


CLAIM_SECONDS = 60
# A due-deliveries sweep starts no delivery that could end later than this after the sweep
# began, so it ends within the 50 s soft time limit of its task (opsconsole/tasks.py) and records
# its heartbeat; what is left waits for the next run.
SWEEP_SECONDS = 40

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# "This network" (0.0.0.0/8): connecting to it reaches this host.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# IPv6 addresses that carry an IPv4 one to a NAT64 gateway (RFC 6052's well-known prefix).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Cloud metadata services outside the link-local ranges (AWS over IPv6, Alibaba Cloud).
_METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
_ALLOW_PRIVATE_HINT = (
    " (OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE=true allows receivers on private networks)"
)

# Name lookups run here rather than in asyncio's default executor, which ``asyncio.run`` waits for
# on the way out: a lookup that hangs past the deadline must not hold the delivery with it.
_lookups = ThreadPoolExecutor(max_workers=4, thread_name_prefix="opsconsole-webhook-dns")


class DestinationRefused(Exception):
    """The receiver is, or resolves to, an address webhooks may not go to."""


def _address_refusal(address: Address, *, allow_private: bool) -> str | None:
    if address.is_unspecified or (address.version == 4 and address in _THIS_NETWORK):
        return "an unspecified"
    if address.is_link_local:
        return "a link-local (cloud metadata)"
    if address in _METADATA:
        return "a cloud metadata"
    if address.is_multicast:
        return "a multicast"
    if allow_private:
        return None
    if address.is_loopback:
        return "a loopback"
    if not address.is_global:
        return "a private"
    return None


def address_refusal(address: Address, *, allow_private: bool) -> str | None:
    """What kind of address ``address`` is, when webhooks may not go to it ("a loopback"), else
    None. An IPv6 address carrying an IPv4 one (mapped, 6to4, NAT64) is judged by both."""
    carried: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            carried.append(address.ipv4_mapped)
        if address.sixtofour:
            carried.append(address.sixtofour)
        if address in _NAT64:
            carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    for each in carried:
        if refusal := _address_refusal(each, allow_private=allow_private):
            return refusal
    return None


def _refusal_message(host: str, address: Address, kind: str) -> str:
    named = f"{address} is" if host == str(address) else f"{host} resolves to {address},"
    hint = _ALLOW_PRIVATE_HINT if kind in {"a loopback", "a private"} else ""
    return f"{named} {kind} address{hint}"


def _literal_address(host: str) -> Address | None:
    """The address ``host`` spells without asking DNS, in any form the system accepts (``127.1``
    and ``2130706433`` are 127.0.0.1), or None for a name."""
    try:
        found = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None
    return ipaddress.ip_address(found[0][4][0])


def destination_refusal(url: str) -> str | None:
    """Why ``url`` may not receive webhooks, as far as can be told without DNS (its host is an
    address, or ``localhost``), for the endpoint form and service; None when it may. Names are
    checked again, on every address they resolve to, each time a delivery is sent."""
    allow_private = settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE
    host = (urlsplit(url).hostname or "").rstrip(".")
    if not host:
        return "Webhook destination not allowed: the URL names no host."
    if host == "localhost" or host.endswith(".localhost"):
        if allow_private:
            return None
        return f"Webhook destination not allowed: {host} is a loopback name{_ALLOW_PRIVATE_HINT}."
    address = _literal_address(host)
    if address is None:
        return None
    kind = address_refusal(address, allow_private=allow_private)
    if kind is None:
        return None
    return f"Webhook destination not allowed: {_refusal_message(host, address, kind)}."


def summary(event: str, payload: dict[str, Any]) -> str:
    if event == "approval.requested":
        return f"Approval needed: {payload.get('agent')} wants {payload.get('tool')} (run {payload.get('run')})"
    if event == "approval.expiring":
        return f"Approval about to expire: {payload.get('tool')} for {payload.get('agent')} (request {payload.get('id')})"
    if event == "kill_switch.changed":
        return f"Kill switch is now {payload.get('mode')} (set by {payload.get('set_by')}: {payload.get('reason')})"
    if event == "drift.alert":
        return f"Drift: {payload.get('metric')} of {payload.get('agent') or 'every agent'} is {payload.get('value')} (baseline {payload.get('baseline_mean')}; rule {payload.get('rule')}) {payload.get('action_taken') or ''}".strip()
    if event == "budget.crossed_80":
        return f"Run {payload.get('run')} of {payload.get('agent')} passed 80% of {payload.get('budget')}"
    if event == "agent.paused":
        return (
            f"Agent {payload.get('agent')} paused by {payload.get('by')}: {payload.get('reason')}"
        )
    if event == "agent.resumed":
        return f"Agent {payload.get('agent')} resumed by {payload.get('by')}"
    if event == "tool.degraded":
        return f"Tool {payload.get('tool')} degraded until {payload.get('until')} by {payload.get('by')}: {payload.get('reason')}"
    if event == "tool.restored":
        return f"Tool {payload.get('tool')} restored by {payload.get('by')}"
    return event


def body_for(delivery: WebhookDelivery) -> bytes:
    if delivery.endpoint.format == WebhookFormat.SLACK:
        body: dict[str, Any] = {"text": summary(delivery.event, delivery.payload)}
    else:
        body = {
            "id": delivery.pk,
            "event": delivery.event,
            "key": delivery.event_key,
            "created_at": delivery.created_at.isoformat(),
            "data": delivery.payload,
        }
    return json.dumps(body, sort_keys=True, default=str).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _claim(delivery_id: int) -> bool:
    """Claim a due delivery (conditional UPDATE): two workers never send the same one at once;
    a claim left by a killed worker lapses after CLAIM_SECONDS and the delivery is retried."""
    now = timezone.now()
    return bool(
        WebhookDelivery.objects.filter(pk=delivery_id)
        .filter(
            Q(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
            | Q(status=DeliveryStatus.SENDING, claimed_until__lt=now)
        )
        .update(
            status=DeliveryStatus.SENDING, claimed_until=now + timedelta(seconds=_claim_seconds())
        )
    )


def _claim_seconds() -> int:
    # A claim outlives the longest a delivery may take, so nobody sends it again meanwhile.
    return max(CLAIM_SECONDS, 2 * settings.OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS)


async def _resolve(host: str, port: int) -> list[Address]:
    loop = asyncio.get_running_loop()
    found = await loop.run_in_executor(
        _lookups, lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    )
    addresses: list[Address] = []
    for *_, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def _post(url: str, *, body: bytes, headers: dict[str, str], allow_private: bool) -> int:
    target = httpx.URL(url)
    host = target.host
    addresses = await _resolve(host, target.port or (443 if target.scheme == "https" else 80))
    for address in addresses:
        if kind := address_refusal(address, allow_private=allow_private):
            raise DestinationRefused(_refusal_message(host, address, kind))
    # Connect to an address just checked (a second lookup could answer otherwise), naming the
    # host in the Host header and, for TLS, in SNI and the certificate check.
    headers = {**headers, "Host": target.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if target.scheme == "https" else {}
    async with httpx.AsyncClient(follow_redirects=False) as client:
        for index, address in enumerate(addresses):
            try:
                # Only the status matters: the body is never read, so it cannot hold us either.
                async with client.stream(
                    "POST",
                    target.copy_with(host=str(address)),
                    content=body,
                    headers=headers,
                    extensions=extensions,
                ) as response:
                    return response.status_code
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise
    raise httpx.ConnectError(f"{host} resolves to no address")


def webhook_post(url: str, *, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to ``url`` and return the receiver's status code, all within
    ``OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS``: name lookup, the address check, connecting, sending
    and the receiver's status line and headers.

    Raises DestinationRefused, TimeoutError at the deadline, httpx.HTTPError or OSError (lookup).
    """

    async def bounded() -> int:
        async with asyncio.timeout(settings.OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS):
            return await _post(
                url,
                body=body,
                headers=headers,
                allow_private=settings.OPSCONSOLE_WEBHOOK_ALLOW_PRIVATE,
            )

    # An event loop of its own, because only a cancelled coroutine gives up in the middle of a
    # read; the callers (Celery tasks, the embedded scheduler) are synchronous threads.
    return asyncio.run(bounded())


def webhook_deliver(*, delivery_id: int) -> str:
    """Try one delivery once. Returns its status afterwards."""
    if not _claim(delivery_id):
        return (
            WebhookDelivery.objects.filter(pk=delivery_id).values_list("status", flat=True).first()
            or "missing"
        )
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    body = body_for(delivery)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "agent-ops-console-webhooks",
        "X-Opsconsole-Event": delivery.event,
        "X-Opsconsole-Delivery": str(delivery.pk),
        "X-Opsconsole-Signature": signature(delivery.endpoint.secret, timestamp, body),
    }
    error = ""
    refused = False
    try:
        status_code = webhook_post(delivery.endpoint.url, body=body, headers=headers)
        if status_code >= 300:
            error = f"HTTP {status_code}"
    except DestinationRefused as exc:
        # Refused for good: sending again would be refused again (an admin can retry it).
        error, refused = f"refused: {exc}", True
    except TimeoutError:
        error = (
            f"no complete answer within {settings.OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS} s "
            "(OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS)"
        )
    except (httpx.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    attempts = delivery.attempts + 1
    now = timezone.now()
    if not error:
        update = {"status": DeliveryStatus.DELIVERED, "delivered_at": now, "last_error": ""}
    elif refused or attempts >= MAX_ATTEMPTS:
        update = {"status": DeliveryStatus.FAILED, "last_error": error}
        logger.warning(
            "webhook %s to %s failed for good: %s", delivery.pk, delivery.endpoint, error
        )
    else:
        backoff = min(settings.OPSCONSOLE_WEBHOOK_BACKOFF_SECONDS * 2 ** (attempts - 1), 600)
        update = {
            "status": DeliveryStatus.PENDING,
            "last_error": error,
            "next_attempt_at": now + timedelta(seconds=backoff),
        }
    WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING).update(
        attempts=attempts, claimed_until=None, **update
    )
    return update["status"]


def webhooks_deliver_due(*, limit: int = 100) -> int:
    """Send due deliveries (and retry lapsed claims), oldest first, for at most SWEEP_SECONDS;
    returns how many were attempted."""
    now = timezone.now()
    due = WebhookDelivery.objects.filter(
        Q(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
        | Q(status=DeliveryStatus.SENDING, claimed_until__lt=now)
    ).order_by("next_attempt_at")
    ids = list(due.values_list("pk", flat=True)[:limit])
    ends_by = time.monotonic() + SWEEP_SECONDS
    attempted = 0
    for delivery_id in ids:
        if attempted and time.monotonic() + settings.OPSCONSOLE_WEBHOOK_DEADLINE_SECONDS > ends_by:
            break
        webhook_deliver(delivery_id=delivery_id)
        attempted += 1
    return attempted
