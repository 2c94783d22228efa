"""Step-up: the actions that move data out of the platform's hands — requesting an export,
releasing one, downloading a released bundle or a signed agreement — each take a fresh
TOTP code typed at the action (a time step later than any accepted before, so not the
sign-in code), under the warning "数据安全责任由本人承担". A stolen session cookie alone
cannot take data out. Failures count toward the account's lockout and are audited
(``portal.signin.check_code``)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, current_app, g, render_template, request
from flask.typing import ResponseReturnValue
from flask_babel import gettext as _

from portal import signin
from portal.views.auth import end_session

CODE_FIELD = "code"


def check(purpose: signin.Purpose, subject: str) -> str | None:
    """None when the request carries a fresh code for the signed-in user; otherwise the
    reason to show. A lock signs the user out here and now (``AccountLocked`` is raised
    for the error page)."""
    try:
        signin.check_code(g.db, current_app.extensions["portal.settings"], g.user,
                          request.form.get(CODE_FIELD, ""), purpose, subject)
    except signin.AccountLocked:
        end_session()
        raise
    except signin.CodeRefused as exc:
        if "already used" in exc.reason:
            return _("This code was already used; wait for the next one from your "
                     "authenticator.")
        return _("Wrong code: type the code your authenticator shows now.")
    return None


def download(purpose: signin.Purpose, subject: str, title: str,
             make: Callable[[], Response]) -> ResponseReturnValue:
    """GET: the step-up page for a download; POST with a fresh code: the file itself."""
    if request.method == "GET":
        return render_template("auth/step_up.html", title=title, problem=None)
    problem = check(purpose, subject)
    if problem is not None:
        return render_template("auth/step_up.html", title=title, problem=problem), 401
    return make()
