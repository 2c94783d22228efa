"""Gateway configuration: one typed object, from environment (SANDBOX_GATEWAY_*) or
arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.anchors import AnchorSettings
from sandbox.limits import MAX_EPSILON
from sandbox.serving import TRUSTED_PROXIES_HELP, TrustedProxies


class GatewaySettings(BaseSettings, AnchorSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_GATEWAY_", extra="ignore")

    database_url: str = Field("sqlite:///var/gateway/gateway.db",
                              description="SQLite or PostgreSQL URL of the ledger database")
    datasets_dir: Path = Field(Path("var/datasets"),
                               description="directory of onboarded datasets to serve")
    state_dir: Path = Field(Path("var/gateway"),
                            description="signing key, admin token and prepared views")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8700, description="port to listen on")
    trusted_proxies: TrustedProxies = Field(default_factory=list,
                                            description=TRUSTED_PROXIES_HELP)
    rate_limit: float = Field(5.0, description="requests per second per token (0 = off)")
    rate_burst: int = Field(10, description="requests a token may make at once")
    max_body_bytes: int = Field(64 * 1024, description="largest request body accepted")
    federation_file: Path | None = Field(None, description="federated datasets, their "
                                         "sites and the key service (JSON; see "
                                         "docs/federated.md)")
    max_export_bytes: int = Field(30 * 1024 * 1024, description="largest export request "
                                  "body accepted (files are base64 in JSON)")
    max_epsilon: float = Field(MAX_EPSILON, gt=0, description="largest total ε a grant may "
                               "have (by default the portal's maximum)")
    portal_key_file: Path = Field(Path("var/portal/grant-public-key.pem"),
                                  description="the portal's public grant key (PEM): grants "
                                  "on federated datasets carry its signed authorization")
    audit_checkpoint_seconds: float = Field(300, ge=0, description="how often the serving "
                                            "gateway exchanges signed audit checkpoints "
                                            "with the key service and the sites (0 = only "
                                            "on demand)")

    engine: Literal["polars", "spark"] = Field(
        "polars", description="what reads the rows: polars (in this process) or spark "
        "(a Spark Connect server at spark_remote; needs the [spark] extra)")
    spark_remote: str = Field("sc://127.0.0.1:15002", pattern=r"^sc://",
                              description="the Spark Connect server (engine spark); it "
                              "must read and write the views where state_dir holds them")

    @property
    def signing_key_file(self) -> Path:
        return self.state_dir / "signing-key.pem"

    @property
    def admin_token_file(self) -> Path:
        return self.state_dir / "admin.token"

    views_dir: Path | None = Field(None, description="where the bounded views (and their "
                                   "rank key) live; by default state_dir/views. With "
                                   "engine spark the Spark server reads and writes them "
                                   "there too")

    @property
    def cache_dir(self) -> Path:
        return self.views_dir or self.state_dir / "views"
