"""Benchmark: from approval to a ready sandbox, beside a stock DockerSpawner, and many
sandboxes at once.

Starts the whole stack (the project's Docker engine, the sandbox image — reused when
built —, gateway, portal, JupyterHub with the hardened spawner and firewall), then:

1. **approve → ready**: a project is approved and its agreement signed in the portal (which
   asks the hub to start the sandbox); the clock runs from the signature until the hub
   reports the server ready. Repeated ``--rounds`` times with a warm image.
2. **baseline**: a stock JupyterHub with the stock ``DockerSpawner`` (same image, a plain
   bridge network, no grant lookup, no hardening) starts a server through its REST API,
   measured the same way, in the same run.
3. **concurrency**: ``--concurrent`` approved projects are signed at once (each sign
   starts a sandbox), all must become ready; then all are stopped at once. Failures are
   counted; the goal is none.

    .venv/bin/python bench/sandboxes.py [--rounds 5] [--concurrent 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from approvals.states import State  # noqa: E402
from portal import workflow  # noqa: E402
from portal.models import Application, User  # noqa: E402
from sandbox.hub.names import server_name  # noqa: E402
from tests.hub.stack import start_docker, start_stack, stop_docker  # noqa: E402
from tests.services import free_port  # noqa: E402

DATASET = ROOT / "var" / "datasets" / "emr-visits"
PROXY = ROOT / "var" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
GOAL_SECONDS = 5.0


def signed_ready(stack, project: int, researcher: User) -> float:
    """Sign the project's agreement (which provisions) and wait until the hub says ready."""
    with stack.app.extensions["portal.sessions"]() as db:
        ctx = workflow.Context(db, db.get(User, researcher.id), stack.settings, "bench")
        started = time.perf_counter()
        workflow.sign(ctx, db.get(Application, project))
    status = stack.hub().wait_ready(f"user-{researcher.id}", server_name(project))
    elapsed = time.perf_counter() - started
    if not status.ready:
        raise RuntimeError(f"sandbox of project {project} did not become ready: {status}")
    return elapsed


def stock_hub_spawns(docker_host: str, rounds: int, work: Path) -> list[float]:
    """Stock JupyterHub + stock DockerSpawner, same image; seconds from the API call until
    the server is ready."""
    port, api_port, proxy_port = free_port(), free_port(), free_port()
    token = os.urandom(16).hex()
    config = work / "stock_config.py"
    config.write_text(textwrap.dedent(f"""
        c = get_config()  # noqa: F821
        c.JupyterHub.ip = "127.0.0.1"
        c.JupyterHub.port = {port}
        c.JupyterHub.hub_bind_url = "http://0.0.0.0:{api_port}"
        c.JupyterHub.hub_connect_url = "http://{{gateway}}:{api_port}"
        c.JupyterHub.db_url = "sqlite:///{work / 'stock.sqlite'}"
        c.JupyterHub.cookie_secret_file = "{work / 'stock_cookie'}"
        c.ConfigurableHTTPProxy.command = ["{PROXY}"]
        c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_port}"
        c.ConfigurableHTTPProxy.pid_file = "{work / 'stock-proxy.pid'}"
        c.JupyterHub.authenticator_class = "dummy"
        c.JupyterHub.spawner_class = "docker"
        c.DockerSpawner.image = "med-sandbox:latest"
        c.DockerSpawner.network_name = "bench-stock"
        c.DockerSpawner.use_internal_ip = True
        c.DockerSpawner.remove = True
        c.DockerSpawner.name_template = "bench-stock-{{username}}"
        c.DockerSpawner.client_kwargs = {{"base_url": "{docker_host}"}}
        c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
        c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                                     "scopes": ["admin:users", "admin:servers"]}}]
    """))
    import docker

    client = docker.DockerClient(base_url=docker_host)
    network = client.networks.create("bench-stock", driver="bridge")
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    config.write_text(config.read_text().replace("{gateway}", gateway))
    log = (work / "stock-hub.log").open("ab")
    hub = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=work,
                           stdout=log, stderr=log)
    api = f"http://127.0.0.1:{port}/hub/api"
    headers = {"Authorization": f"token {token}"}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{api}/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        times = []
        for n in range(rounds):
            user = f"stock{n}"
            httpx.post(f"{api}/users/{user}", headers=headers)
            started = time.perf_counter()
            httpx.post(f"{api}/users/{user}/server", headers=headers, timeout=120)
            while not httpx.get(f"{api}/users/{user}", headers=headers).json()[
                    "servers"].get("", {}).get("ready"):
                time.sleep(0.1)
            times.append(time.perf_counter() - started)
            httpx.request("DELETE", f"{api}/users/{user}/server", headers=headers,
                          timeout=120)
        return times
    finally:
        hub.terminate()
        hub.wait(120)
        _stop_pidfile(work / "stock-proxy.pid")
        for box in client.containers.list(all=True, filters={"name": "bench-stock-"}):
            box.remove(force=True)
        network.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()
    if not DATASET.is_dir():
        sys.exit(f"no demo dataset at {DATASET}; run `make demo` first")
    client, host, started = start_docker()
    work = Path(tempfile.mkdtemp(prefix="bench-sandboxes-"))
    stack = start_stack(client, host, DATASET, work, SANDBOX_HUB_MEM_LIMIT="512M")
    try:
        size = client.images.get("med-sandbox:latest").attrs["Size"] / 1e6
        print(f"image med-sandbox:latest, {size:.0f} MB; {os.cpu_count()} cores", flush=True)
        ours = []
        for _ in range(args.rounds):
            project, researcher = stack.approved_project(sign=False)
            ours.append(signed_ready(stack, project, researcher))
        stock = stock_hub_spawns(host, args.rounds, work)
        p50, stock_p50 = statistics.median(ours), statistics.median(stock)
        print(f"approve → ready (sign in the portal → hub reports ready), {args.rounds} rounds:")
        print(f"  sealed sandbox : p50 {p50:.2f} s, max {max(ours):.2f} s "
              f"(goal ≤ {GOAL_SECONDS:.0f} s: {'met' if p50 <= GOAL_SECONDS else 'MISSED'})")
        print(f"  stock spawner  : p50 {stock_p50:.2f} s, max {max(stock):.2f} s")
        print(f"  ratio          : {p50 / stock_p50:.2f}× stock", flush=True)

        pending = [stack.approved_project(sign=False) for _ in range(args.concurrent)]
        started_all = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent) as pool:
            outcomes = list(pool.map(lambda pr: _attempt(signed_ready, stack, *pr), pending))
        ready_wall = time.perf_counter() - started_all
        failures = [o for o in outcomes if isinstance(o, Exception)]
        hub = stack.hub()
        started_stop = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent) as pool:
            stops = list(pool.map(lambda pr: _attempt(
                hub.stop, f"user-{pr[1].id}", server_name(pr[0])), pending))
        stop_wall = time.perf_counter() - started_stop
        stop_failures = [o for o in stops if isinstance(o, Exception)]
        times = [o for o in outcomes if not isinstance(o, Exception)]
        print(f"{args.concurrent} sandboxes at once: all ready after {ready_wall:.1f} s "
              f"(each p50 {statistics.median(times):.1f} s), {len(failures)} failed to start; "
              f"stopped in {stop_wall:.1f} s, {len(stop_failures)} failed to stop")
        for failure in failures + stop_failures:
            print(f"  failure: {failure}")
        with stack.app.extensions["portal.sessions"]() as db:
            active = sum(db.get(Application, p).state == State.ACTIVE for p, _ in pending)
        print(f"  projects active: {active}/{args.concurrent}")
    finally:
        stack.close()
        client.close()
        if started:
            stop_docker()


def _stop_pidfile(path: Path) -> None:
    """Stop the proxy the stock hub started, if it outlived the hub."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(path.read_text().strip()), signal.SIGTERM)


def _attempt(function, *args):
    try:
        return function(*args)
    except Exception as exc:  # counted and printed, never hidden
        return exc


if __name__ == "__main__":
    main()
