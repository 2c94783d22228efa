"""The demo a newcomer meets after ``make run``: one account per role, with strong random
passwords and TOTP already enrolled, and one project on ``emr-visits`` taken through the
whole application workflow (submit, assign, score, an admin's verification of the
researcher's title and credit grade, approve, sign), so that its grant exists on the gateway
and its sandbox starts.

Guarantees: demo accounts are made only in demo mode and only in a portal database that
holds no one else's account — their passwords are printed and kept in a file, which a
deployment must never have. The project goes through ``portal.workflow`` step by step, so
every rule applies and every step is audited as if the people had clicked. Seeding again
changes nothing: the accounts file is the source of the credentials, and each step is
taken only if the project has not passed it yet."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import pyotp
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from approvals.decisions import Decision
from approvals.states import Role, State
from portal import catalog, credentials, institutions, sandboxes, workflow
from portal.config import PortalSettings
from portal.models import Application, Profile, User
from portal.pdf import TextPdf
from portal.security import check_password, hash_password, new_totp_secret, password_problem
from sandbox import audit
from sandbox.audit import AuditAction
from sandbox.errors import Conflict, Forbidden, InputError, NotFound
from sandbox.hub.client import ServerStatus
from sandbox.hub.names import server_name
from sandbox.secretfile import write_new

DATASET = "emr-visits"
EMAIL_DOMAIN = "demo.sandbox.local"
ACCOUNTS_FILE = Path("demo") / "accounts.json"  # under the stack's VAR directory


@dataclass(frozen=True)
class Person:
    """Who a demo account stands for (self-declared profile, as at registration)."""

    key: str            # how the CLI names the account: researcher, expert1, …
    role: Role
    name: str
    institution: tuple[str, str]  # a registry entry: Chinese and English names
    title: str          # 职称
    years: int
    research_field: str


LINGNAN_UNIVERSITY = ("岭南大学公共卫生学院", "Lingnan University School of Public Health")
SYSU_HOSPITAL = ("中山大学附属第一医院", "First Affiliated Hospital of Sun Yat-sen University")
PROVINCIAL_CDC = ("广东省疾病预防控制中心", "Guangdong Provincial CDC")
SOUTHERN_MEDICAL = ("南方医科大学", "Southern Medical University")
HEALTH_COMMISSION = ("广东省卫生健康委员会", "Health Commission of Guangdong Province")
PLATFORM = ("岭南区域医疗数据平台", "Lingnan Regional Health Data Platform")

PEOPLE: tuple[Person, ...] = (
    Person("researcher", Role.RESEARCHER, "陈静", LINGNAN_UNIVERSITY, "教授", 12, "流行病学"),
    Person("expert1", Role.EXPERT, "李建国", SYSU_HOSPITAL, "主任医师", 25, "临床医学"),
    Person("expert2", Role.EXPERT, "王晓梅", PROVINCIAL_CDC, "研究员", 18, "卫生统计学"),
    Person("expert3", Role.EXPERT, "刘洋", SOUTHERN_MEDICAL, "教授", 15, "医学伦理学"),
    Person("chair", Role.CHAIR, "黄志明", HEALTH_COMMISSION, "主任医师", 28, "卫生管理"),
    Person("controller", Role.CONTROLLER, "周丽华", PLATFORM, "高级工程师", 14,
           "医疗数据治理"),
    # an export needs two controllers' votes (SANDBOX_PORTAL_EXPORT_REVIEWERS, default 2)
    Person("controller2", Role.CONTROLLER, "孙建华", PLATFORM, "高级工程师", 9,
           "医疗数据治理"),
    Person("admin", Role.ADMIN, "吴海涛", PLATFORM, "高级工程师", 10, "信息安全"),
)
KEYS = tuple(p.key for p in PEOPLE)

TITLE = "门诊与住院费用的人群差异研究"
DRAFT = workflow.Draft(
    DATASET, TITLE,
    "按性别、年龄段和就诊类型描述门诊与住院费用及住院时长的分布，为医保政策评估提供依据。",
    "medical_research", True, 3.0, 12, [],
    [("sex", "按性别分层描述费用差异"), ("age_band", "按年龄段分层"),
     ("visit_type", "区分门诊与住院"), ("department", "科室间比较"),
     ("length_of_stay", "住院时长与费用的关系"), ("total_cost", "研究的主要结局")])
SCORES = ({"legality": 5, "consistency": 5, "value": 4, "leakage_risk": 2, "cost": 4},
          {"legality": 5, "consistency": 4, "value": 4, "leakage_risk": 2, "cost": 3},
          {"legality": 4, "consistency": 5, "value": 5, "leakage_risk": 1, "cost": 4})
DECISION = Decision("approve", "方案合理，字段最小必要，同意 / a sound plan using only the "
                    "fields it needs: approved", frozenset(), 3.0, 1e-6, 12)


@dataclass(frozen=True)
class Account:
    """A demo account's credentials, as printed and kept in the accounts file."""

    key: str
    role: str
    name: str
    email: str
    password: str
    totp_secret: str

    def code(self) -> str:
        """The current TOTP code, as an authenticator app shows it."""
        return pyotp.TOTP(self.totp_secret).now()


@dataclass(frozen=True)
class Seeded:
    accounts: list[Account]
    project: int
    researcher: int
    changed: bool


def check_demo_mode(demo: bool) -> None:
    if not demo:
        raise Forbidden("demo accounts are made only in demo mode (make run sets "
                        "SANDBOX_DEMO=1; or pass --demo): their passwords are printed and "
                        "kept in a file, which a deployment must never have")


def email_of(key: str) -> str:
    return f"{key}@{EMAIL_DOMAIN}"


def _institution(db: Session, profile: Profile, names: tuple[str, str], actor: str) -> None:
    """The one place a demo person's institution is set: its registry entry, added to the
    registry (audited) when the registry lacks it."""
    profile.institution = institutions.resolve(db, names[0]) or institutions.add(
        db, actor, *names, details={"demo": True})


def certificate(person: User, kind: str) -> bytes:
    """The evidence the demo admin verifies a claim with: a PDF that says it is a demo."""
    value = getattr(person.profile, kind)
    document = TextPdf("示例证明 / demonstration certificate")
    document.line("示例证明（仅用于演示，非真实证件）", size=14)
    document.line("Demonstration certificate — demo data only, not a real document", size=11)
    document.space(4)
    document.line(f"{person.name}（{person.email}）")
    document.line(f"{'职称 / title' if kind == 'title' else '社会信用等级 / credit grade'}: "
                  f"{value}")
    return document.bytes()


def _password() -> str:
    alphabet = string.ascii_letters + string.digits
    while True:  # 20 characters from 62: ~119 bits; redrawn until the portal's rule holds
        password = "".join(secrets.choice(alphabet) for _ in range(20))
        if password_problem(password) is None and any(c.isdigit() for c in password):
            return password


def new_accounts() -> list[Account]:
    return [Account(p.key, str(p.role), p.name, email_of(p.key), _password(),
                    new_totp_secret()) for p in PEOPLE]


def read_accounts(path: Path) -> list[Account]:
    """The accounts in ``path``; ``NotFound`` when there is none, ``InputError`` when it is
    not an accounts file."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        accounts = [Account(**a) for a in document["accounts"]]
    except FileNotFoundError:
        raise NotFound(f"no demo accounts at {path} (make run creates them)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a demo accounts file: {exc}") from None
    if sorted(a.key for a in accounts) != sorted(KEYS):
        raise InputError(f"{path} does not hold the demo's accounts ({', '.join(KEYS)})")
    return accounts


def account(accounts: list[Account], key: str) -> Account:
    found = next((a for a in accounts if a.key == key), None)
    if found is None:
        raise InputError(f"no demo account {key!r}; the demo has: {', '.join(KEYS)}")
    return found


def seed(db: Session, settings: PortalSettings, accounts_file: Path, actor: str) -> Seeded:
    """Make (or find) the demo accounts and the active demo project. Every check comes
    before the first write, so a refusal leaves no trace; ``actor`` (who runs the seed)
    is audited for the accounts, each workflow step as the demo person taking it."""
    emails = {email_of(k) for k in KEYS}
    present = {u.email: u for u in db.scalars(select(User).where(User.email.in_(emails)))}
    accounts_file = Path(accounts_file)
    others = db.scalar(select(func.count()).select_from(User).where(User.email.not_in(emails)))
    # Accounts made after a complete seed (someone registered to try the demo) are the
    # demo's own; before it, they are a portal that is not a demo's.
    seeded_before = len(present) == len(KEYS) and accounts_file.exists()
    if others and not seeded_before:
        raise Forbidden(f"the portal database holds {others} account(s) that are not the "
                        f"demo's: demo accounts are made only in a portal of their own")
    if present and not accounts_file.exists():
        raise Conflict(f"the demo accounts exist but {accounts_file} is gone, and their "
                       f"passwords cannot be shown again: start from an empty portal "
                       f"database")
    entry = next((e for e in catalog.load(settings.datasets_dir) if e["id"] == DATASET), None)
    if entry is None:
        raise NotFound(f"the demo dataset {DATASET} is not in {settings.datasets_dir} "
                       f"(make demo onboards it)")
    experts = [p for p in PEOPLE if p.role == Role.EXPERT]
    if settings.quorum > len(experts):
        raise InputError(f"the demo has {len(experts)} experts but the quorum is "
                         f"{settings.quorum} (SANDBOX_PORTAL_QUORUM)")
    if accounts_file.exists():
        accounts = read_accounts(accounts_file)
    else:
        accounts = new_accounts()
        write_new(accounts_file, json.dumps({"accounts": [asdict(a) for a in accounts]},
                                            ensure_ascii=False, indent=2).encode())
    for a in accounts:
        if a.email in present:
            _check_same(present[a.email], a)
    users = {a.key: present.get(a.email) or _create(db, a, actor) for a in accounts}
    created = len(present) < len(accounts)
    application, moved = _project(db, settings, users, entry)
    if created or moved:
        audit.append(db.connection(), AuditAction.DEMO_SEEDED, actor,
                     f"application:{application.id}",
                     {"accounts": sorted(a.email for a in accounts)})
        db.commit()
    return Seeded(accounts, application.id, users["researcher"].id, created or moved)


def _check_same(user: User, a: Account) -> None:
    if (user.role != a.role or user.totp_secret != a.totp_secret or not user.totp_enabled
            or not check_password(user.password_hash, a.password)):
        raise Conflict(f"the demo account {a.email} no longer matches the accounts file: "
                       f"start from an empty portal database")


def _create(db: Session, a: Account, actor: str) -> User:
    person = next(p for p in PEOPLE if p.key == a.key)
    profile = Profile(title=person.title, years_experience=person.years,
                      research_field=person.research_field, credit_grade="A")
    _institution(db, profile, person.institution, actor)
    # TOTP is enrolled already: every role is asked for a code, never shown a QR code.
    user = User(email=a.email, name=a.name, role=a.role, password_hash=hash_password(a.password),
                totp_secret=a.totp_secret, totp_enabled=True, profile=profile)
    db.add(user)
    db.flush()
    audit.append(db.connection(), AuditAction.USER_REGISTERED, actor, f"user:{user.id}",
                 {"role": a.role, "demo": True})
    audit.append(db.connection(), AuditAction.MFA_ENROLLED, actor, f"user:{user.id}",
                 {"demo": True})
    db.commit()
    return user


def _project(db: Session, settings: PortalSettings, users: dict[str, User], entry: dict
             ) -> tuple[Application, bool]:
    """The demo project, taken through each workflow step it has not passed yet."""
    def ctx(key: str) -> workflow.Context:
        return workflow.Context(db, users[key], settings)

    researcher = users["researcher"]
    application = db.scalar(select(Application).where(
        Application.researcher_id == researcher.id, Application.title == TITLE))
    moved = application is None
    if application is None:
        application = workflow.create_draft(ctx("researcher"), entry, DRAFT)
    if application.state == State.DRAFT:
        workflow.submit(ctx("researcher"), application,
                        credentials.applicant(db, researcher), credentials.policy(settings))
        moved = True
    experts = [k for k in KEYS if users[k].role == Role.EXPERT]
    if application.state == State.SUBMITTED:
        workflow.assign(ctx("chair"), application, [users[k] for k in experts])
        moved = True
    if application.state == State.UNDER_REVIEW:
        scored = {r.expert_id for r in workflow.reviews(db, application)}
        for key, values in zip(experts, SCORES, strict=True):
            if users[key].id not in scored:
                workflow.score(ctx(key), application, values, "", [])
        # An approval rests on a title and credit grade an admin verified with evidence.
        for kind, proof in credentials.current(db, researcher).items():
            if proof is None:
                credentials.verify(db, users["admin"], researcher, kind,
                                   getattr(researcher.profile, kind),
                                   certificate(researcher, kind))
        workflow.decide(ctx("chair"), application, DECISION)
        moved = True
    if application.state == State.APPROVED:
        workflow.sign(ctx("researcher"), application)
        moved = True
    if application.state != State.ACTIVE:
        raise Conflict(f"the demo project #{application.id} is {application.state}, not "
                       f"active: start from an empty portal database")
    return application, moved


def sandbox(db: Session, settings: PortalSettings, project: int, actor: str,
            timeout: float = 300) -> ServerStatus | None:
    """The demo project's sandbox once ready (or after ``timeout`` seconds), started again
    when a restarted hub left it stopped, as the project page's "Start sandbox" does; None
    without a hub."""
    if not sandboxes.enabled(settings):
        return None
    application = db.get(Application, project)
    view = sandboxes.view(db, settings, application)
    if view is None or view.status in (sandboxes.Status.STOPPED, sandboxes.Status.FAILED):
        sandboxes.provision(db, settings, application, actor)
    client = sandboxes.hub(settings)
    try:
        return client.wait_ready(sandboxes.hub_username(application.researcher),
                                 server_name(application.id), timeout)
    finally:
        client.close()
