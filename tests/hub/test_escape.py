"""Escape attempts from inside live sandboxes. No traffic leaves this machine: the
"outside" is a canary container on an ordinary Docker network and a canary server on the
host, both ours. Every probe runs as the researcher, inside the sandbox, with Python."""

from __future__ import annotations

import ast
import ipaddress
import json
import socket
import socketserver
import subprocess
import textwrap
import threading

import httpx
import pytest

from sandbox.client import Gateway, GatewayError
from sandbox.hub import network
from sandbox.hub.names import server_name

PROBE = textwrap.dedent("""
    import json, os, socket, sys
    def tcp(host, port, timeout=2.0):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return "open"
        except OSError as exc:
            return type(exc).__name__
    def resolve(name):
        try:
            return socket.getaddrinfo(name, 80)[0][4][0]
        except OSError as exc:
            return type(exc).__name__
    targets = json.loads(sys.argv[1])
    out = {"tcp": {f"{h}:{p}": tcp(h, p) for h, p in targets["tcp"]},
           "dns": {n: resolve(n) for n in targets["dns"]}}
    routes = open("/proc/net/route").read().splitlines()[1:]
    out["default_route"] = any(line.split()[1] == "00000000" for line in routes)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def sandboxes(stack):
    """Two live sandboxes of two researchers' projects."""
    live = []
    for _ in range(2):
        project, researcher = stack.approved_project()
        assert stack.hub().wait_ready(f"user-{researcher.id}", server_name(project)).ready
        live.append((project, researcher, stack.container(project, researcher)))
    return live


@pytest.fixture(scope="module")
def canary_container(stack):
    """An 'outside' host: a web server on an ordinary (non-internal) Docker network."""
    net = stack.docker.networks.create("escape-outside", driver="bridge",
                                       labels={"med-sandbox": "test"})
    box = stack.docker.containers.run(
        "med-sandbox:latest", ["python3", "-m", "http.server", "8080"], detach=True,
        network="escape-outside", name="escape-canary", labels={"med-sandbox": "test"},
        user="1000:1000")
    box.reload()
    address = box.attrs["NetworkSettings"]["Networks"]["escape-outside"]["IPAddress"]
    for _ in range(50):
        if box.exec_run(["python3", "-c", "import urllib.request as u; "
                         "u.urlopen('http://127.0.0.1:8080', timeout=1)"]).exit_code == 0:
            break
    yield address
    box.remove(force=True)
    net.remove()


@pytest.fixture(scope="module")
def canary_host():
    """An 'outside' server on the host itself, bound to every address."""
    class Hello(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"hello")

    server = socketserver.ThreadingTCPServer(("0.0.0.0", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assert socket.create_connection(("127.0.0.1", server.server_address[1]), 2)
    yield server.server_address[1]
    server.shutdown()


def run(container, *argv: str, user: str = "1000:1000") -> tuple[int, str]:
    result = container.exec_run(list(argv), user=user, demux=False)
    return result.exit_code, result.output.decode(errors="replace")


def host_address(container) -> str:
    env = dict(line.split("=", 1) for line in container.attrs["Config"]["Env"])
    return env["SANDBOX_GATEWAY_URL"].split("//")[1].split(":")[0]


def probe(container, tcp: list[tuple[str, int]], dns: list[str]) -> dict:
    code, out = run(container, "python3", "-c", PROBE,
                    json.dumps({"tcp": tcp, "dns": dns}))
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_network_reaches_only_hub_and_gateway(stack, sandboxes, canary_container,
                                              canary_host):
    (_, _, box), (_, _, other) = sandboxes
    host = host_address(box)
    env = dict(line.split("=", 1) for line in box.attrs["Config"]["Env"])
    hub_api = int(env["JUPYTERHUB_API_URL"].rsplit(":", 1)[1].split("/")[0])
    other_ip = next(iter(other.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    seen = probe(box, tcp=[(host, stack.gateway.port), (host, hub_api),
                           (host, canary_host), (host, 22), (host, 8600),
                           (canary_container, 8080), (other_ip, 8888), ("192.0.2.2", 80),
                           ("10.0.0.1", 80)],
                 dns=["example.com", "deb.debian.org", "escape-canary", "pypi.org"])
    tcp = seen["tcp"]
    # positive controls: the two ports a sandbox needs
    assert tcp[f"{host}:{stack.gateway.port}"] == "open"
    assert tcp[f"{host}:{hub_api}"] == "open"
    # the host's other ports (a canary bound to 0.0.0.0), the outside, another sandbox
    for target in (f"{host}:{canary_host}", f"{host}:22", f"{host}:8600",
                   f"{canary_container}:8080", f"{other_ip}:8888", "192.0.2.2:80",
                   "10.0.0.1:80"):
        assert tcp[target] != "open", (target, tcp[target])
    assert all(not answer[0].isdigit() for answer in seen["dns"].values()), seen["dns"]
    assert seen["default_route"] is False
    # the canary itself answers from its own network, so "not open" above is the seal
    assert httpx.get(f"http://{canary_container}:8080", timeout=5).status_code == 200


def tcp_from_host(address: str, port: int) -> str:
    try:
        with socket.create_connection((address, port), timeout=2):
            return "open"
    except OSError as exc:
        return type(exc).__name__


def test_hub_api_and_gateway_answer_only_on_loopback_and_sandbox_bridges(
        stack, sandboxes, canary_container):
    """Adversary: anything on the host's other networks — a container on an ordinary
    Docker network (its own network namespace, with a route to the host), or a machine on
    the host's LAN (played here by connecting to the host's non-loopback addresses)."""
    _, _, box = sandboxes[0]
    bridge_host = host_address(box)
    env = dict(line.split("=", 1) for line in box.attrs["Config"]["Env"])
    ports = [stack.gateway.port,
             int(env["JUPYTERHUB_API_URL"].rsplit(":", 1)[1].split("/")[0])]
    # positive controls: loopback and the sandbox reach both
    assert [tcp_from_host("127.0.0.1", port) for port in ports] == ["open", "open"]
    inside = probe(box, tcp=[(bridge_host, port) for port in ports], dns=[])["tcp"]
    assert set(inside.values()) == {"open"}, inside
    # a container on an ordinary Docker network: neither the host's address on its own
    # network nor the sandbox bridge's address answers
    canary = stack.docker.containers.get("escape-canary")
    outside_host = network.gateway_address(stack.docker.networks.get("escape-outside").attrs)
    outside = probe(canary, tcp=[(address, port) for address in (outside_host, bridge_host)
                                 for port in ports], dns=[])["tcp"]
    assert len(outside) == 4 and "open" not in outside.values(), outside
    # the host's non-loopback addresses (its LAN address, the bridges' addresses)
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                           text=True, check=True).stdout.split()
    addresses = [a.split("/")[0] for a in shown if "/" in a and not
                 ipaddress.ip_interface(a).ip.is_loopback and a[0].isdigit()]
    assert bridge_host in addresses and outside_host in addresses
    seen = {f"{a}:{p}": tcp_from_host(a, p) for a in addresses for p in ports}
    assert "open" not in seen.values(), seen


def test_restricted_data_is_absent(stack, sandboxes):
    _, _, box = sandboxes[0]
    restricted = stack.gateway.datasets_dir.resolve()
    code, out = run(box, "python3", "-c", textwrap.dedent(f"""
        import os, glob
        print(os.path.exists({str(restricted)!r}),
              os.path.exists({str(stack.root)!r}),
              sorted(glob.glob('/opt/datasets/*/*')),
              any('restricted' in root for root, _, _ in os.walk('/')))
    """))
    assert code == 0, out
    assert out.startswith("False False"), out
    assert "/opt/datasets/emr-visits/dummy" in out and out.strip().endswith("False")


def test_filesystem_is_read_only_outside_workspace_and_tmp(sandboxes):
    _, _, box = sandboxes[0]
    code, out = run(box, "python3", "-c", textwrap.dedent("""
        import os
        def write(path):
            try:
                with open(path, "w") as f:
                    f.write("x")
                return "written"
            except OSError as exc:
                return type(exc).__name__
        print({p: write(p) for p in ["/opt/venv/x", "/etc/passwd", "/usr/bin/x", "/x",
                                      "/home/researcher/work/notes.txt", "/tmp/x"]})
    """))
    assert code == 0, out
    result = ast.literal_eval(out.strip())
    assert result["/home/researcher/work/notes.txt"] == "written"
    assert result["/tmp/x"] == "written"
    for path in ("/opt/venv/x", "/etc/passwd", "/usr/bin/x", "/x"):
        assert result[path] != "written", (path, result)


def test_becoming_root_fails(sandboxes):
    _, _, box = sandboxes[0]
    code, out = run(box, "python3", "-c", textwrap.dedent("""
        import os
        try:
            os.setuid(0)
            print("root")
        except PermissionError:
            print("refused")
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        print(status["CapEff"].strip(), status["NoNewPrivs"].strip(), os.getuid())
    """))
    assert code == 0, out
    assert out.split() == ["refused", "0000000000000000", "1", "1000"], out
    code, out = run(box, "su", "-c", "id -u")
    assert code != 0 or out.strip() != "0", out


def test_fork_bomb_is_contained(stack, sandboxes):
    project, researcher, box = sandboxes[0]
    _, out = run(box, "python3", "-c", textwrap.dedent("""
        import os, signal, time
        children = []
        try:
            for _ in range(5000):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
            print("unbounded", len(children))
        except OSError as exc:
            print("stopped", len(children), type(exc).__name__)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)
    """))
    words = out.split()
    assert words[0] == "stopped", out
    assert int(words[1]) < 128
    box.reload()
    assert box.status == "running"
    assert stack.hub().status(f"user-{researcher.id}", server_name(project)).ready


def test_another_projects_token_is_refused(stack, sandboxes):
    """B's token, active and valid, is refused from A's sandbox (and from the host): a
    project's token works only from its own sandbox's network."""
    (_, _, box_a), (_, _, box_b) = sandboxes
    env_b = dict(line.split("=", 1) for line in box_b.attrs["Config"]["Env"])
    assert "remaining" in run(box_b, "python3", "-c", "from sandbox.client import Gateway; "
                              "print(Gateway.from_env().budget()['epsilon'])")[1]
    script = textwrap.dedent(f"""
        from sandbox.client import Gateway, GatewayError
        import os
        mine = Gateway.from_env()
        print("mine", mine.budget()["epsilon"]["remaining"] > 0)
        theirs = Gateway(os.environ["SANDBOX_GATEWAY_URL"], {env_b['SANDBOX_GATEWAY_TOKEN']!r})
        try:
            theirs.count("emr-visits", epsilon=0.1)
            print("theirs answered")
        except GatewayError as exc:
            print("theirs", exc.status)
        forged = Gateway(os.environ["SANDBOX_GATEWAY_URL"], "sgw_" + "0" * 40)
        try:
            forged.budget()
        except GatewayError as exc:
            print("forged", exc.status)
    """)
    code, out = run(box_a, "python3", "-c", script)
    assert code == 0, out
    assert "mine True" in out and "theirs 403" in out and "forged 401" in out, out
    outside = Gateway(stack.gateway.url, env_b["SANDBOX_GATEWAY_TOKEN"])
    with pytest.raises(GatewayError, match="only from the project's sandbox"):
        outside.budget()
