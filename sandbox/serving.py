"""How the project's HTTP services (gateway, sites, key service) are served: uvicorn, with
proxy headers believed only from proxies the deployment names.

The caller's address is evidence: the gateway accepts a project's token only from its
sandbox's network, and every audit entry records where its request came from. uvicorn
believes ``X-Forwarded-For`` from 127.0.0.1 by default, so anyone on the service's host
could claim any address. Here no proxy is trusted unless configured; with none, the
address is the TCP peer's and the headers are ignored.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_settings import NoDecode


def _networks(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    try:
        return sorted({str(ipaddress.ip_network(str(item).strip(), strict=False))
                       for item in items if str(item).strip()})
    except ValueError as exc:
        raise ValueError(f"a trusted proxy is an IP address or network: {exc}") from None


# A settings field: addresses or networks, from the environment as a comma-separated list.
TrustedProxies = Annotated[list[str], NoDecode, BeforeValidator(_networks)]

TRUSTED_PROXIES_HELP = ("addresses or networks of reverse proxies whose X-Forwarded-For "
                        "is believed (comma-separated; none by default)")


def serve(app: Any, host: str, port: int, trusted_proxies: list[str]) -> None:
    """Serve ``app`` until interrupted; proxy headers only from ``trusted_proxies``."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                proxy_headers=bool(trusted_proxies),
                forwarded_allow_ips=list(trusted_proxies))
