"""The portal as the hub's identity provider (OAuth2 authorization code, authlib) and the
two service calls the hub's spawner makes: grant lookup before a start, destruction record
after a delete. Researchers start or restart their project's sandbox from here too."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from authlib.integrations.flask_oauth2 import (
    AuthorizationServer,
    ResourceProtector,
    current_token,
)
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Blueprint, current_app, g, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import delete

from approvals.states import Role
from portal import csrf, sandboxes
from portal.models import OAuthCode, OAuthToken, User
from portal.views.auth import login_required, record
from portal.views.researcher import own
from sandbox.audit import AuditAction
from sandbox.errors import InputError, Unauthenticated
from sandbox.hub.settings import OAUTH_CLIENT_ID, shared_secret

bp = Blueprint("hub", __name__)
TOKEN_LIFETIME = 3600
CODE_LIFETIME = 120


def _settings():
    return current_app.extensions["portal.settings"]


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class HubOAuthClient(ClientMixin):
    """The one OAuth client: the sandbox hub, with its secret shared through a file."""

    client_id = OAUTH_CLIENT_ID

    def __init__(self, secret: str, redirect_uri: str) -> None:
        self.secret, self.redirect_uri = secret, redirect_uri

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return "profile"

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret, self.secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


def _client(client_id: str) -> HubOAuthClient | None:
    settings = _settings()
    if client_id != OAUTH_CLIENT_ID or not sandboxes.enabled(settings):
        return None
    return HubOAuthClient(shared_secret(settings.secrets_dir, "hub-oauth-client.secret"),
                          f"{settings.hub_url.rstrip('/')}/hub/oauth_callback")


class _Code:
    def __init__(self, row: OAuthCode) -> None:
        self.row = row

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic",
                                                      "client_secret_post"]

    def save_authorization_code(self, code: str, req) -> None:
        g.db.add(OAuthCode(code_hash=_digest(code), client_id=req.client.get_client_id(),
                           user_id=req.user.id, redirect_uri=req.payload.redirect_uri or "",
                           scope=req.scope or "",
                           expires_at=datetime.now(UTC) + timedelta(seconds=CODE_LIFETIME)))
        g.db.commit()

    def query_authorization_code(self, code: str, client) -> _Code | None:
        row = g.db.get(OAuthCode, _digest(code))
        if row is None or row.client_id != client.get_client_id() or \
                sandboxes.aware(row.expires_at) < datetime.now(UTC):
            return None
        return _Code(row)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        g.db.execute(delete(OAuthCode).where(OAuthCode.code_hash ==
                                             authorization_code.row.code_hash))
        g.db.commit()

    def authenticate_user(self, authorization_code: _Code) -> User | None:
        return g.db.get(User, authorization_code.row.user_id)


def _save_token(token: dict, req) -> None:
    g.db.add(OAuthToken(token_hash=_digest(token["access_token"]),
                        client_id=req.client.get_client_id(), user_id=req.user.id,
                        scope=token.get("scope", ""),
                        expires_at=datetime.now(UTC) + timedelta(
                            seconds=token.get("expires_in", TOKEN_LIFETIME))))
    g.db.commit()


class _Token:
    def __init__(self, row: OAuthToken) -> None:
        self.row = row

    def get_scope(self) -> str:
        return self.row.scope

    def is_expired(self) -> bool:
        return sandboxes.aware(self.row.expires_at) < datetime.now(UTC)

    def is_revoked(self) -> bool:
        return False


class _Validator(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> _Token | None:
        row = g.db.get(OAuthToken, _digest(token_string))
        return _Token(row) if row is not None else None


server = AuthorizationServer(query_client=_client, save_token=_save_token)
server.register_grant(CodeGrant)
protected = ResourceProtector()
protected.register_token_validator(_Validator())


def init_app(app) -> None:
    app.config.setdefault("OAUTH2_TOKEN_EXPIRES_IN", {"authorization_code": TOKEN_LIFETIME})
    server.init_app(app)
    app.register_blueprint(bp)


# -- OAuth2 endpoints -----------------------------------------------------------------

@bp.route("/oauth/authorize", methods=["GET"])
@login_required()
def authorize() -> ResponseReturnValue:
    """The hub is a first-party client: a signed-in user is sent straight back with a
    code (no consent screen); the sign-in is audited."""
    record(AuditAction.OAUTH_AUTHORIZED, f"user:{g.user.id}", {"client": OAUTH_CLIENT_ID})
    return server.create_authorization_response(grant_user=g.user)


@bp.route("/oauth/token", methods=["POST"])
@csrf.exempt
def issue_token() -> ResponseReturnValue:
    if request.authorization is None and not request.form.get("client_id"):
        return jsonify({"error": "invalid_client",
                        "reason": "the token endpoint is for the hub's client credentials"}), 401
    return server.create_token_response()


@bp.route("/oauth/userinfo", methods=["GET"])
@protected("profile")
def userinfo() -> ResponseReturnValue:
    user = g.db.get(User, current_token.row.user_id)
    return jsonify({"sub": str(user.id), "preferred_username":
                    sandboxes.hub_username(user), "name": user.name,
                    "email": user.email, "role": user.role})


# -- the spawner's calls ------------------------------------------------------------------

def _service() -> None:
    header = request.headers.get("Authorization", "")
    expected = sandboxes.service_token(_settings())
    if not header.startswith("Bearer ") or not hmac.compare_digest(header[7:], expected):
        raise Unauthenticated("this call is for the sandbox hub's service token only")


def _json() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InputError("send a JSON object")
    return body


@bp.route("/api/v1/hub/grant", methods=["POST"])
@csrf.exempt
def grant() -> ResponseReturnValue:
    _service()
    body = _json()
    try:
        user, project = str(body["user"]), int(body["project"])
        network = str(body["network"]) if body.get("network") else None
    except (KeyError, TypeError, ValueError):
        raise InputError("give the hub user and the project id") from None
    return jsonify(sandboxes.grant_for(g.db, _settings(), user, project, network))


@bp.route("/api/v1/hub/destruction", methods=["POST"])
@csrf.exempt
def destruction() -> ResponseReturnValue:
    _service()
    saved = sandboxes.record_destruction(g.db, _json())
    return jsonify({"id": saved.id, "complete": saved.complete})


# -- researcher ---------------------------------------------------------------------------

@bp.route("/applications/<int:application_id>/sandbox", methods=["POST"])
@login_required(Role.RESEARCHER)
def start(application_id: int) -> ResponseReturnValue:
    """Start (or restart) the project's sandbox."""
    app = own(application_id)
    sandboxes.provision(g.db, _settings(), app, f"user:{g.user.id}")
    return redirect(url_for("researcher.show", application_id=app.id))
