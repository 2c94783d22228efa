"""The sandbox's network: one internal Docker network per sandbox, and a host firewall.

An internal network has no default route, so nothing beyond its own subnet is reachable,
and with one network per sandbox no other sandbox shares that subnet. What remains is the
host's own address on the bridge. The hub API and the gateway listen on loopback only, so
nothing off this host reaches them (packets for 127.0.0.0/8 arriving on any other
interface are dropped by the kernel as martians). For sandboxes, and only for them, the
hub forwards the two ports: connections arriving on a sandbox bridge for the host's
address are DNAT-ed to 127.0.0.1 on the same port, which the kernel delivers because the
bridge alone has ``route_localnet`` set; the source address stays the sandbox's (the
gateway's token binding checks it). The filter chain accepts from sandbox bridges only
those forwarded connections and drops the rest (IPv4 and IPv6). Bridges are named
``sbx…`` so one rule covers them all (docs/adr/0009).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess

from sandbox.errors import Unavailable

CHAIN = "MEDSANDBOX-IN"
NAT_CHAIN = "MEDSANDBOX-DNAT"
LOOPBACK = "127.0.0.1"
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


def open_loopback(bridge: str) -> None:
    """Let the kernel deliver connections from ``bridge`` that the firewall forwarded to
    loopback (and route the replies back); no other interface gets this."""
    path = f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"
    try:
        with open(path, "w") as flag:
            flag.write("1")
    except OSError as exc:
        raise Unavailable(f"cannot forward the sandbox network {bridge} to the hub API and "
                          f"the gateway ({exc}); the hub needs root") from None


def install_firewall(ports: list[int]) -> None:
    """Forward ``ports`` (TCP) from sandbox bridges to loopback, admit only those
    forwarded connections from sandbox bridges, drop the rest; idempotent."""
    for tool in _tools():
        _iptables(tool, "-N", CHAIN, check=False)
        _iptables(tool, "-F", CHAIN)
        _iptables(tool, "-A", CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
                  "-j", "ACCEPT")
        if tool == "iptables":  # sandboxes have no IPv6; on IPv6 they get nothing
            for port in ports:
                _iptables(tool, "-A", CHAIN, "-d", LOOPBACK, "-p", "tcp", "--dport", str(port),
                          "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
        _iptables(tool, "-A", CHAIN, "-j", "DROP")
        _jump(tool, "filter", "INPUT", CHAIN)
    _iptables("iptables", "-t", "nat", "-N", NAT_CHAIN, check=False)
    _iptables("iptables", "-t", "nat", "-F", NAT_CHAIN)
    for port in ports:
        _iptables("iptables", "-t", "nat", "-A", NAT_CHAIN, "-p", "tcp", "--dport", str(port),
                  "-m", "addrtype", "--dst-type", "LOCAL",
                  "-j", "DNAT", "--to-destination", f"{LOOPBACK}:{port}")
    _jump("iptables", "nat", "PREROUTING", NAT_CHAIN)


def remove_firewall() -> None:
    """Remove the rules ``install_firewall`` made (sandboxes are stopped by then)."""
    for tool, table, hook, chain in [*((t, "filter", "INPUT", CHAIN) for t in _tools()),
                                     ("iptables", "nat", "PREROUTING", NAT_CHAIN)]:
        while _iptables(tool, "-t", table, "-D", hook, "-i", f"{BRIDGE_PREFIX}+", "-j", chain,
                        check=False) == 0:
            pass
        _iptables(tool, "-t", table, "-F", chain, check=False)
        _iptables(tool, "-t", table, "-X", chain, check=False)


def _jump(tool: str, table: str, hook: str, chain: str) -> None:
    """``hook`` sends traffic from sandbox bridges to ``chain`` first (once)."""
    jump = ["-i", f"{BRIDGE_PREFIX}+", "-j", chain]
    if _iptables(tool, "-t", table, "-C", hook, *jump, check=False) != 0:
        _iptables(tool, "-t", table, "-I", hook, "1", *jump)


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
