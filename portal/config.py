"""Portal configuration: one typed object, from environment (SANDBOX_PORTAL_*) or
arguments."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.anchors import AnchorSettings
from sandbox.anomalies import AnomalyPolicy
from sandbox.errors import InputError
from sandbox.secretfile import read_or_create


class PortalSettings(BaseSettings, AnchorSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_PORTAL_", extra="ignore")

    database_url: str = Field("sqlite:///var/portal/portal.db",
                              description="SQLite or PostgreSQL URL of the portal database")
    state_dir: Path = Field(Path("var/portal"), description="secret key and uploads")
    datasets_dir: Path = Field(Path("var/datasets"),
                               description="onboarded datasets whose catalog is shown")
    idle_minutes: int = Field(10, ge=1, description="sessions of experts, chairs, "
                              "controllers and admins lock after this many idle minutes")
    researcher_idle_minutes: int = Field(30, ge=1, description="researchers' sessions lock "
                                         "after this many idle minutes")
    session_hours: float = Field(12, gt=0, description="every session ends this many hours "
                                 "after sign-in, however active")
    max_failed_logins: int = Field(5, description="failed logins before an account locks")
    lockout_minutes: int = Field(30, description="how long a locked account stays locked")
    login_rate: str = Field("20 per minute", description="sign-in attempts (password and "
                            "TOTP code, page and API) allowed per address")
    max_upload_bytes: int = Field(10 * 1024 * 1024, description="largest ethics PDF accepted")
    min_title_grade: int = Field(3, description="职称 grade needed to apply (3 = 副高级)")
    min_years_experience: int = Field(5, description="years of research experience to apply")
    gateway_url: str = Field("http://127.0.0.1:8700", description="privacy gateway URL")
    gateway_token_file: Path = Field(Path("var/gateway/admin.token"),
                                     description="the gateway's service token")
    pseudonym_key_file: Path = Field(Path("var/keys/pseudonym.key"),
                                     description="the controller's pseudonymisation key "
                                     "(ID numbers given at consent intake)")
    smtp_host: str = Field("127.0.0.1", description="SMTP server for notifications")
    smtp_port: int = Field(8025, description="SMTP port")
    mail_from: str = Field("data-committee@sandbox.local", description="sender address")
    public_url: str = Field("http://127.0.0.1:8600", description="address in e-mail links")
    hub_url: str = Field("", description="sandbox hub URL (empty: no sandboxes)")
    secrets_dir: Path = Field(Path("var/secrets"),
                              description="secrets shared with the hub (OAuth, tokens)")
    term_check_seconds: float = Field(60, description="how often a serving portal runs "
                                      "its periodic round: ends terms that have passed, "
                                      "prunes, exchanges audit checkpoints with the "
                                      "gateway (0 = never)")
    destruction_due_days: int = Field(30, ge=1, description="days a closed project's "
                                      "researcher has to submit the destruction certificate")
    anomaly_policy: dict = Field(default_factory=dict, description="thresholds of the "
                                 "anomaly rules, JSON such as {\"work_start\": \"08:00\", "
                                 "\"burst_queries\": 30} (see sandbox.anomalies)")

    @field_validator("anomaly_policy")
    @classmethod
    def _anomaly_policy(cls, values: dict) -> dict:
        try:
            AnomalyPolicy.from_mapping(values)
        except InputError as exc:
            raise ValueError(exc.reason) from None
        return values
    export_reviewers: int = Field(2, ge=1, description="independent reviewers each export "
                                  "request needs")
    audit_retention_days: int = Field(365, ge=183, description="audit entries older than "
                                      "this are pruned while the portal serves (at least "
                                      "183 days)")
    quorum: int = Field(3, description="expert scores needed before a decision")
    conflict_lookback_days: int = Field(365, ge=0, description="an institution that an "
                                        "expert, a chair or the applicant left up to this "
                                        "many days before an application was submitted, or "
                                        "at any time since, conflicts as the one they hold "
                                        "now")
    aggregation: str = Field("mean", description="how expert totals combine: mean or median")
    testing: bool = Field(False, description="disable CSRF and rate limits for unit tests")

    def secret_key(self) -> str:
        return read_or_create(self.state_dir / "secret.key",
                              lambda: secrets.token_hex(32).encode()).decode().strip()
