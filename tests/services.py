"""Real services for tests: PostgreSQL (Debian's, started by the project's script) and the
gateway as its own process, reached over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    """A running cluster and the URL of the project's role."""

    base_url: str
    started: bool
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> Postgres:
        out = subprocess.run([str(ROOT / "infra" / "scripts" / "postgres.sh")],
                             capture_output=True, text=True, check=True, timeout=600)
        url, state = out.stdout.split()[-2:]
        return cls(url, state == "started")

    def new_database(self) -> str:
        name = f"sandbox_test_{uuid.uuid4().hex[:10]}"
        admin = create_engine(self.base_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        self.databases.append(name)
        return self.base_url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        admin = create_engine(self.base_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in self.databases:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if self.started:
            version = sorted(os.listdir("/usr/lib/postgresql"), key=float)[-1]
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                            "stop"], check=False)


def start_service(args: list[str], url: str, log_path: Path,
                  timeout: float = 120) -> subprocess.Popen:
    """``sandboxctl ARGS`` as its own process, once ``url``/v1/health answers."""
    log = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen([str(Path(sys.executable).parent / "sandboxctl"), *args],
                            stdout=log, stderr=log, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[:2]} exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{args[:2]} did not become ready; see {log_path}")


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class GatewayProcess:
    """``sandboxctl gateway serve`` in its own process."""

    @classmethod
    def on_sqlite(cls, datasets_dir: Path, state: Path) -> GatewayProcess:
        """A gateway over ``datasets_dir`` with its ledger in SQLite under ``state``."""
        return cls(datasets_dir, state / "state", f"sqlite:///{state / 'gateway.db'}")

    datasets_dir: Path
    state_dir: Path
    database_url: str
    rate_limit: float = 0
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    federation_file: Path | None = None
    options: list[str] = field(default_factory=list)  # more ``gateway serve`` options
    start_timeout: float = 120  # seconds to answer (a first start builds the views)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    def start(self) -> GatewayProcess:
        args = ["gateway", "serve", "--host", self.host, "--port", str(self.port),
                "--database-url", self.database_url, "--datasets-dir", str(self.datasets_dir),
                "--state-dir", str(self.state_dir), "--rate-limit", str(self.rate_limit)]
        if self.federation_file:
            args += ["--federation-file", str(self.federation_file)]
        args += self.options
        self.proc = start_service(args, self.url,
                                  self.state_dir.parent / f"gateway-{self.port}.log",
                                  self.start_timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def admin(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", json=body, timeout=60,
                             headers={"Authorization": f"Bearer {self.admin_token}"})

    def grant(self, **overrides: object) -> dict:
        body = {
            "project": "p-" + uuid.uuid4().hex[:6], "datasets": ["emr-visits"],
            "fields": ["sex", "age_band", "visit_type", "total_cost", "length_of_stay",
                       "diagnosis_code", "department"],
            "purpose": "medical_research", "epsilon": 10.0, "delta": 1e-5,
            "expires_at": "2030-01-01T00:00:00Z",
        } | overrides
        response = self.admin("POST", "/v1/admin/grants", body)
        assert response.status_code == 201, response.text
        return response.json()


def portal_env(root: Path, datasets: Path, gateway: GatewayProcess, smtp_port: int,
               public_url: str) -> dict[str, str]:
    """SANDBOX_PORTAL_* for a portal process over ``root``, wired to a running gateway."""
    return {
        "SANDBOX_PORTAL_DATABASE_URL": f"sqlite:///{root / 'portal.db'}",
        "SANDBOX_PORTAL_STATE_DIR": str(root / "portal"),
        "SANDBOX_PORTAL_DATASETS_DIR": str(datasets),
        "SANDBOX_PORTAL_GATEWAY_URL": gateway.url,
        "SANDBOX_PORTAL_GATEWAY_TOKEN_FILE": str(gateway.state_dir / "admin.token"),
        "SANDBOX_PORTAL_SMTP_PORT": str(smtp_port),
        "SANDBOX_PORTAL_PUBLIC_URL": public_url,
    }
