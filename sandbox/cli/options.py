"""Options the services' ``serve`` commands share."""

from __future__ import annotations

from collections.abc import Callable

import click


def trusted_proxy_option(env: str) -> Callable:
    """``--trusted-proxy`` (repeatable) of a service's ``serve`` command."""
    return click.option("--trusted-proxy", "trusted_proxies", multiple=True,
                        help="Address or network of a reverse proxy whose X-Forwarded-For "
                             f"is believed; repeat for several [env {env}, comma-separated; "
                             "none: the caller's address is the TCP peer's].")


def given(options: dict) -> dict:
    """The options given on the command line (the rest come from the environment)."""
    return {k: v for k, v in options.items() if v is not None and v != ()}
