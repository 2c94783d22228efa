"""Control plane: accounts, catalog, applications, reviews, decisions and agreements.

``create_app(settings)`` is the application factory; each area is a blueprint, and every
rule comes from ``approvals`` — views only parse, call and render."""

from __future__ import annotations

from flask import Flask, g, jsonify, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_babel import Babel
from flask_babel import gettext as _
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect

from portal import anchoring, i18n, labels, signin
from portal import gateway as portal_gateway
from portal.config import PortalSettings
from portal.db import connect
from portal.security import cross_site_problem, is_locked
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import Forbidden, InputError, SandboxError, Unauthenticated

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


class CrossSiteRefused(Forbidden):
    """A state-changing API call that may come from another site's page."""

    code = "cross_site"


class _CookieSessions(SecureCookieSessionInterface):
    """The signed cookie, marked ``Secure`` whenever the portal is reached over HTTPS —
    by its public address or by the request itself — so it never travels in clear."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


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
        SESSION_COOKIE_SECURE=settings.public_url.lower().startswith("https://"),
        BABEL_TRANSLATION_DIRECTORIES=str(i18n.TRANSLATIONS),
    )
    app.session_interface = _CookieSessions()
    app.extensions["portal.settings"] = settings
    # the public half of the portal's grant key, for the services that check grants
    portal_gateway.grant_signer(settings)
    engine, sessions = connect(settings.database_url)
    app.extensions["portal.engine"] = engine
    app.extensions["portal.sessions"] = sessions
    app.extensions["portal.anchors"] = anchoring.anchors(settings, engine)
    csrf.init_app(app)
    limiter.init_app(app)
    Babel(app, locale_selector=i18n.current_language)
    app.jinja_env.globals["current_locale"] = i18n.current_language
    app.jinja_env.filters["label"] = labels.label

    from portal.views import admin, api, auth, catalog, committee, controller, hub, researcher

    app.register_blueprint(auth.bp)
    app.register_blueprint(catalog.bp)
    app.register_blueprint(researcher.bp)
    app.register_blueprint(committee.bp)
    app.register_blueprint(controller.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
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
        """The signed-in user of this request, from the server-side session record the
        cookie names; an ended, idle, expired or locked session signs in nobody."""
        g.audit_origin = audit.ORIGIN.set(request.remote_addr)
        g.db = sessions()
        g.user = g.signin = None
        record = signin.find(g.db, session.get("sid"))
        if record is None:
            session.pop("sid", None)
            return None
        why = signin.expired(record, settings)
        if why is None and is_locked(record.user.locked_until):
            why = "locked"
        if why is not None:
            minutes = int(signin.idle_limit(settings, record.user.role).total_seconds() // 60)
            signin.end(g.db, record, why)
            language = session.get("lang")
            session.clear()
            if language:
                session["lang"] = language
            if request.path.startswith("/api/"):
                raise Unauthenticated(f"the session ended ({why}); sign in again")
            return redirect(url_for("auth.login", **({"idle": minutes} if why == "idle"
                                                       else {"expired": why})))
        signin.touch(g.db, record)
        g.user, g.signin = record.user, record
        return None

    @app.before_request
    def _same_origin_api():
        """The JSON API rides on the session cookie, which a browser attaches to requests
        other sites make: a state-changing call must prove it comes from this portal's
        own pages or a program (JSON body, and a same-origin ``Origin`` or an
        ``X-Requested-With`` header — neither of which a cross-site form can send).
        Calls with a bearer token (the hub's service calls) carry no ambient authority."""
        if not request.path.startswith("/api/"):
            return None
        problem = cross_site_problem(
            request.method, request.mimetype, request.headers.get("Origin"),
            request.headers.get("X-Requested-With"), request.host_url,
            settings.public_url, request.authorization is not None
            and request.authorization.type == "bearer")
        if problem is None:
            return None
        if g.user is not None:
            auth.record(AuditAction.CROSS_SITE_REFUSED, f"user:{g.user.id}",
                        {"path": request.path, "why": problem,
                         "origin": request.headers.get("Origin", "")[:200]})
        raise CrossSiteRefused(problem)

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
