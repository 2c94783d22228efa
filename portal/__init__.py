"""Control plane: accounts, catalog, applications, reviews, decisions and agreements.

``create_app(settings)`` is the application factory; each area is a blueprint, and every
rule comes from ``approvals`` — views only parse, call and render."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask, g, jsonify, redirect, request, session, url_for
from flask_babel import Babel
from flask_babel import gettext as _
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect

from portal import anchoring, i18n, labels
from portal.config import PortalSettings
from portal.db import connect
from portal.models import User
from portal.security import needs_mfa
from sandbox import audit
from sandbox.errors import InputError, SandboxError

csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address, default_limits=[], storage_uri="memory://")


def _strings(data: object) -> list[str]:
    """Every string (keys included) inside a parsed JSON document."""
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return []


def create_app(settings: PortalSettings | None = None) -> Flask:
    settings = settings or PortalSettings()
    i18n.compile_catalogs()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key(),
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + 64 * 1024,
        WTF_CSRF_ENABLED=not settings.testing,
        RATELIMIT_ENABLED=not settings.testing,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        BABEL_TRANSLATION_DIRECTORIES=str(i18n.TRANSLATIONS),
    )
    app.extensions["portal.settings"] = settings
    engine, sessions = connect(settings.database_url)
    app.extensions["portal.engine"] = engine
    app.extensions["portal.sessions"] = sessions
    app.extensions["portal.anchors"] = anchoring.anchors(settings, engine)
    csrf.init_app(app)
    limiter.init_app(app)
    Babel(app, locale_selector=i18n.current_language)
    app.jinja_env.globals["current_locale"] = i18n.current_language
    app.jinja_env.filters["label"] = labels.label

    from portal.views import api, auth, catalog, committee, controller, hub, researcher

    app.register_blueprint(auth.bp)
    app.register_blueprint(catalog.bp)
    app.register_blueprint(researcher.bp)
    app.register_blueprint(committee.bp)
    app.register_blueprint(controller.bp)
    app.register_blueprint(api.bp)
    hub.init_app(app)

    @app.before_request
    def _refuse_nul():
        # No database stores NUL inside text (PostgreSQL refuses it outright): turn it away
        # at the door for every form, query string and JSON body alike.
        values = [*request.args.values(), *request.form.values()]
        if request.is_json:
            values += _strings(request.get_json(silent=True))
        if any("\x00" in v for v in values):
            raise InputError("text may not contain NUL characters")
        return None

    @app.before_request
    def _load_user():
        g.audit_origin = audit.ORIGIN.set(request.remote_addr)
        g.db = sessions()
        g.user = None
        uid = session.get("uid")
        if uid is None:
            return None
        user = g.db.get(User, uid)
        if user is None:
            session.clear()
            return None
        now = datetime.now(UTC).timestamp()
        idle = now - session.get("seen", now)
        if needs_mfa(user.role) and idle > settings.idle_minutes * 60:
            auth.idle_lock(user)
            return redirect(url_for("auth.login", idle=1))
        session["seen"] = now
        g.user = user
        return None

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()
        origin = g.pop("audit_origin", None)
        if origin is not None:
            audit.ORIGIN.reset(origin)

    @app.errorhandler(SandboxError)
    def _domain_error(exc: SandboxError):
        if request.path.startswith("/api/"):
            return jsonify({"error": exc.code, "reason": exc.reason, **exc.details}), \
                exc.http_status
        return auth.render_error(exc.http_status, auth.reason_of(exc))

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError):
        return auth.render_error(400, _("The form expired; please try again."))

    @app.errorhandler(413)
    def _too_large(_exc: Exception):
        return auth.render_error(413, _("The upload is too large."))

    return app
