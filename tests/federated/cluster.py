"""A federation for real (tests and bench/federated.py): the key service and one process
per site, each started with ``sandboxctl``, reached over HTTP; the sites' keys registered
with the key service through its CLI; and a gateway — as its own process, or built in this
process and served over HTTP all the same. ``start_exact`` adds a second federation over
the same partitions whose sites add no noise and whose key service accepts that (switches
no setting reaches: the services are built in this process), to compare answers with the
pooled computation."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import uvicorn

from sandbox import receipts
from sandbox.federated import authorization, keys, keys_app, site
from sandbox.gateway.app import create_app
from sandbox.gateway.service import GatewayService
from sandbox.gateway.settings import GatewaySettings
from tests.conftest import run_cli
from tests.services import free_port, start_service, stop_process

SITES = ("north", "south", "east")


@dataclass
class Cluster:
    root: Path
    dataset_id: str
    parts: Path
    keys_url: str
    keys_db: str
    sites: dict[str, str]
    federation_file: Path
    gateway_state: Path
    processes: dict = field(default_factory=dict)

    @property
    def gateway_key(self) -> Path:
        return self.gateway_state / "public-key.pem"

    @property
    def portal_key(self) -> Path:
        """The portal's public grant key (what the sites and the key service check each
        query's authorization with); its signing half beside it, for the tests' grants."""
        return self.root / "portal" / "grant-public-key.pem"

    def portal_signer(self) -> receipts.Signer:
        return portal_signer(self.portal_key)

    def signer(self) -> receipts.Signer:
        """The gateway's signing key (what sites and the key service trust)."""
        return receipts.Signer(self.gateway_state / "signing-key.pem")

    def gateway_settings(self, name: str, federation_file: Path | None = None
                         ) -> GatewaySettings:
        empty = self.root / "central"
        empty.mkdir(exist_ok=True)
        # The gateway process keeps the witness in the shared state directory; each
        # in-process gateway has a database, so a witness, of its own.
        return GatewaySettings(database_url=f"sqlite:///{self.root / f'{name}.db'}",
                               datasets_dir=empty, state_dir=self.gateway_state,
                               federation_file=federation_file or self.federation_file,
                               rate_limit=0, portal_key_file=self.portal_key,
                               audit_witness_file=self.root / f"{name}-witness.jsonl")

    def close(self) -> None:
        for proc in self.processes.values():
            if isinstance(proc, ServedApp):
                proc.close()
            else:
                stop_process(proc)


def portal_signer(public_key: Path) -> receipts.Signer:
    """The portal's grant key whose public half is ``public_key`` (made, and published
    there, on first use — as the portal does)."""
    signer = receipts.Signer(public_key.parent / "grant-signing-key.pem")
    public_key.write_bytes(signer.public_pem)
    return signer


def authorize(signer: receipts.Signer, body: dict) -> dict:
    """The portal's signed authorization of a grant request's terms."""
    expires = datetime.fromisoformat(str(body["expires_at"]).replace("Z", "+00:00"))
    return authorization.issue(signer, body["project"], body["datasets"], body["fields"],
                               body["purpose"], body["epsilon"], body.get("delta", 0.0),
                               expires)


def start_cluster(parts: Path, dataset_id: str, root: Path,
                  names: tuple[str, ...] = SITES) -> Cluster:
    """Start the key service and a site per partition in ``parts`` (``sandboxctl site
    split`` output), register the sites' keys, and write ``federation.json``."""
    gateway_state = root / "gateway"
    signer = receipts.Signer(gateway_state / "signing-key.pem")
    (gateway_state / "public-key.pem").write_bytes(signer.public_pem)
    keys_port = free_port()
    keys_url, keys_db = f"http://127.0.0.1:{keys_port}", f"sqlite:///{root / 'keys.db'}"
    cluster = Cluster(root, dataset_id, parts, keys_url, keys_db, {},
                      root / "federation.json", gateway_state)
    portal_signer(cluster.portal_key)  # the portal's grant key, as the portal makes it
    try:
        cluster.processes["keys"] = start_service(
            ["keys", "serve", "--state-dir", str(root / "keys"), "--database-url", keys_db,
             "--gateway-key", str(cluster.gateway_key), "--portal-key",
             str(cluster.portal_key), "--port", str(keys_port)],
            keys_url, root / "keys.log")
        for name in names:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cluster.processes[name] = start_service(
                ["site", "serve", "--site", name, "--dataset-dir", str(parts / name),
                 "--state-dir", str(root / f"site-{name}"), "--keys-url", keys_url,
                 "--gateway-key", str(cluster.gateway_key), "--portal-key",
                 str(cluster.portal_key), "--port", str(port)],
                url, root / f"site-{name}.log", timeout=600)
            cluster.sites[name] = url
            public = root / f"site-{name}.pub.pem"
            public.write_text(httpx.get(f"{url}/v1/public-key").text)
            registered = run_cli("keys", "register-site", name, public, "--state-dir",
                                 root / "keys", "--database-url", keys_db)
            assert registered.code == 0, registered.stderr
    except BaseException:
        cluster.close()
        raise
    cluster.federation_file.write_text(json.dumps({"keys_url": keys_url, "datasets": {
        dataset_id: {"metadata": str(parts / "metadata.json"), "sites": cluster.sites}}}))
    return cluster


def serve_sites(cluster: Cluster, parts: Path, names: dict[str, str], keys_url: str,
                keys_db: str, keys_state: Path, state: Path, noise: bool = True
                ) -> dict[str, str]:
    """Site services built in this process over ``parts/<partition>`` (``names``: site
    name → partition), served over HTTP and registered with the key service whose
    database and state directory are ``keys_db`` and ``keys_state``; their URLs."""
    urls = {}
    for name, partition in names.items():
        settings = site.SiteSettings(site=name, dataset_dir=parts / partition,
                                     state_dir=state / f"site-{name}", keys_url=keys_url,
                                     gateway_key_file=cluster.gateway_key,
                                     portal_key_file=cluster.portal_key)
        served = ServedApp(site.create_app(settings, site.SiteService(settings, noise)))
        cluster.processes[f"served-{name}-{served.port}"] = served
        public = state / f"site-{name}.pub.pem"
        public.write_text(httpx.get(f"{served.url}/v1/public-key").text)
        registered = run_cli("keys", "register-site", name, public, "--state-dir",
                             keys_state, "--database-url", keys_db)
        assert registered.code == 0, registered.stderr
        urls[name] = served.url
    return urls


def start_exact(cluster: Cluster) -> Path:
    """A noise-free federation over the cluster's partitions (tests only); its
    federation file."""
    root = cluster.root / "exact"
    root.mkdir(exist_ok=True)
    keys_db = f"sqlite:///{root / 'keys.db'}"
    settings = keys.KeySettings(state_dir=root / "keys", database_url=keys_db,
                                gateway_key_file=cluster.gateway_key,
                                portal_key_file=cluster.portal_key)
    served = ServedApp(keys_app.create_app(service=keys.KeyService(settings,
                                                               require_noise=False)))
    cluster.processes["exact-keys"] = served
    sites = serve_sites(cluster, cluster.parts, {n: n for n in cluster.sites}, served.url,
                        keys_db, root / "keys", root, noise=False)
    federation = root / "federation.json"
    federation.write_text(json.dumps({"keys_url": served.url, "datasets": {
        cluster.dataset_id: {"metadata": str(cluster.parts / "metadata.json"),
                             "sites": sites}}}))
    return federation


class ServedApp:
    """A service built in this process (so tests can pass what no setting can), served
    over real HTTP on its own port: a gateway service, or any app."""

    def __init__(self, service: GatewayService | object) -> None:
        app = create_app(service=service) if isinstance(service, GatewayService) \
            else service
        self.service = service if isinstance(service, GatewayService) else \
            getattr(app.state, "service", None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Served as sandboxctl serves it: no proxy headers believed.
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning",
                                                    proxy_headers=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the in-process service did not start")
            time.sleep(0.05)

    def admin(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        token = (self.service.settings.admin_token_file).read_text().strip()
        return httpx.request(method, f"{self.url}{path}", json=body, timeout=300,
                             headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
