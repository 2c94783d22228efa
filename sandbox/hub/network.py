"""The sandbox's network: one internal Docker network per sandbox, and a host firewall.

An internal network has no default route, so nothing beyond its own subnet is reachable,
and with one network per sandbox no other sandbox shares that subnet. What remains is the
host's own address on the bridge, which answers on every port the host binds to 0.0.0.0;
the firewall admits only the hub API and gateway ports from sandbox bridges and drops the
rest (IPv4 and IPv6). Bridges are named ``sbx…`` so one rule covers them all.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess

from sandbox.errors import Unavailable

CHAIN = "MEDSANDBOX-IN"
BRIDGE_PREFIX = "sbx"
LABEL = "med-sandbox"


def names(instance: str, user: str, server: str) -> tuple[str, str]:
    """(network name, bridge interface name) of a sandbox; the interface fits 15 bytes."""
    digest = hashlib.sha256(f"{instance}/{user}/{server}".encode()).hexdigest()[:10]
    return f"{instance}-net-{digest}", f"{BRIDGE_PREFIX}{digest}"


def labels(instance: str, user: str, server: str) -> dict[str, str]:
    """Labels on everything of a sandbox (container, volume, network)."""
    return {LABEL: "sandbox", f"{LABEL}.instance": instance, f"{LABEL}.user": user,
            f"{LABEL}.server": server}


def create_kwargs(instance: str, user: str, server: str) -> dict:
    """Arguments of Docker's ``create_network`` for a sandbox's own internal network."""
    network, bridge = names(instance, user, server)
    return {
        "name": network,
        "driver": "bridge",
        "internal": True,
        "check_duplicate": True,
        "options": {
            "com.docker.network.bridge.name": bridge,
            "com.docker.network.bridge.enable_icc": "false",
        },
        "labels": labels(instance, user, server),
    }


def gateway_address(network_attrs: dict) -> str:
    """The host's address on a network: where the sandbox reaches the hub and gateway."""
    return _ipam(network_attrs, "Gateway")


def subnet(network_attrs: dict) -> str:
    """The network's subnet: the only addresses the project's token is accepted from."""
    return _ipam(network_attrs, "Subnet")


def _ipam(network_attrs: dict, key: str) -> str:
    for config in network_attrs.get("IPAM", {}).get("Config") or []:
        if config.get(key):
            return config[key]
    raise Unavailable(f"network {network_attrs.get('Name')} has no {key.lower()}")


def install_firewall(ports: list[int]) -> None:
    """Admit only ``ports`` (TCP) from sandbox bridges to this host; idempotent."""
    for tool in _tools():
        _iptables(tool, "-N", CHAIN, check=False)
        _iptables(tool, "-F", CHAIN)
        _iptables(tool, "-A", CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
                  "-j", "ACCEPT")
        for port in ports:
            _iptables(tool, "-A", CHAIN, "-p", "tcp", "--dport", str(port), "-j", "ACCEPT")
        _iptables(tool, "-A", CHAIN, "-j", "DROP")
        jump = ["INPUT", "-i", f"{BRIDGE_PREFIX}+", "-j", CHAIN]
        if _iptables(tool, "-C", *jump, check=False) != 0:
            _iptables(tool, "-I", *jump[:1], "1", *jump[1:])


def remove_firewall() -> None:
    """Remove the rules ``install_firewall`` made (sandboxes are stopped by then)."""
    for tool in _tools():
        while _iptables(tool, "-D", "INPUT", "-i", f"{BRIDGE_PREFIX}+", "-j", CHAIN,
                        check=False) == 0:
            pass
        _iptables(tool, "-F", CHAIN, check=False)
        _iptables(tool, "-X", CHAIN, check=False)


def _tools() -> list[str]:
    if shutil.which("iptables") is None:
        raise Unavailable("iptables is not installed; sandboxes could reach the host "
                          "(apt-get install iptables)")
    return [tool for tool in ("iptables", "ip6tables") if shutil.which(tool)]


def _iptables(tool: str, *args: str, check: bool = True) -> int:
    done = subprocess.run([tool, "-w", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise Unavailable(f"{tool} {' '.join(args)} failed: {done.stderr.strip()}")
    return done.returncode
