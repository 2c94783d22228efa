"""E-mail notifications (SMTP). A mail server that is down never blocks a decision: the
failure is logged and the workflow goes on."""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

log = logging.getLogger("portal.notify")


def send(host: str, port: int, sender: str, to: list[str], subject: str, body: str) -> bool:
    recipients = sorted({t for t in to if t})
    if not recipients:
        return False
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, ", ".join(recipients), subject
    message.set_content(body)
    try:
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.send_message(message)
        return True
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("could not send %r to %s: %s", subject, recipients, exc)
        return False


def about_application(settings: object, to: list[str], application_id: int, title: str,
                      what: str) -> bool:
    """A bilingual note about an application, with a link to its page."""
    link = f"{settings.public_url}/applications/{application_id}"
    return send(settings.smtp_host, settings.smtp_port, settings.mail_from, to,
                f"[数据沙箱 Data sandbox] {title}: {what}",
                f"申请 #{application_id}「{title}」：{what}\n"
                f"Application #{application_id} \"{title}\": {what}\n\n{link}\n")
