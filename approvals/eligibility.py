"""Who may apply, per the guide's applicant rules: experienced researchers in the field
with a matching professional title (职称), social-credit grade A, not blacklisted, and a
non-profit purpose. Every failed rule is reported, not just the first.

The title and the credit grade are what a person *declares* until an admin verifies them
against an evidence file; an assessment says which of the two it relied on. Self-declared
claims let an application be submitted and reviewed (shown as such to the committee), but
an approval needs both verified (docs/adr/0008): no grant rests on a claim nobody checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from approvals.errors import Ineligible, Reason
from approvals.states import Role
from sandbox.purposes import IDS

# Professional titles and their grade: 1 初级, 2 中级, 3 副高级, 4 正高级.
TITLE_GRADES: dict[str, int] = {
    "住院医师": 1, "助理研究员": 2, "研究实习员": 1, "助教": 1, "技师": 1,
    "主治医师": 2, "讲师": 2, "主管技师": 2, "工程师": 2,
    "副主任医师": 3, "副研究员": 3, "副教授": 3, "副主任技师": 3, "高级工程师": 3,
    "主任医师": 4, "研究员": 4, "教授": 4, "主任技师": 4, "正高级工程师": 4,
}
GRADE_NAMES = {1: ("初级", "junior"), 2: ("中级", "intermediate"),
               3: ("副高级", "associate senior"), 4: ("正高级", "senior")}
COMMERCIAL_PURPOSES = frozenset({"commercial_development", "commercial_insurance"})
KNOWN_PURPOSES = frozenset(IDS)


class Basis(StrEnum):
    """What a claim about the applicant rests on."""

    SELF_DECLARED = "self_declared"
    VERIFIED = "verified"  # an admin checked it against an evidence file


@dataclass(frozen=True)
class Applicant:
    """What eligibility looks at about a person."""

    role: Role
    title: str
    years_experience: int
    research_field: str
    credit_grade: str
    blacklisted: bool = False
    title_basis: Basis = Basis.SELF_DECLARED
    credit_basis: Basis = Basis.SELF_DECLARED


@dataclass(frozen=True)
class EligibilityPolicy:
    """Thresholds the committee configures."""

    min_title_grade: int = 3
    min_years_experience: int = 5
    credit_grades: frozenset[str] = frozenset({"A"})
    fields: frozenset[str] = field(default_factory=frozenset)  # empty: any field


def reasons(applicant: Applicant, purpose: str, non_profit: bool,
            policy: EligibilityPolicy) -> list[Reason]:
    """Every rule the applicant or the application fails (empty when eligible)."""
    out: list[Reason] = []
    if applicant.role != Role.RESEARCHER:
        out.append(Reason("role", "只有研究人员账户可以提交申请",
                          "only researcher accounts may apply"))
    grade = TITLE_GRADES.get(applicant.title, 0)
    if grade < policy.min_title_grade:
        zh, en = GRADE_NAMES[policy.min_title_grade]
        out.append(Reason("title", f"职称需为{zh}及以上（当前：{applicant.title or '无'}）",
                          f"{'an' if en[:1] in 'aeiou' else 'a'} {en} professional title or "
                          "higher is required "
                          f"(now: {applicant.title or 'none'})"))
    if applicant.years_experience < policy.min_years_experience:
        out.append(Reason("experience",
                          f"需具备至少 {policy.min_years_experience} 年相关领域研究经验",
                          f"at least {policy.min_years_experience} years of research "
                          f"experience in the field are required"))
    if policy.fields and applicant.research_field not in policy.fields:
        out.append(Reason("field", "研究领域与数据集不符",
                          "the research field does not match the dataset"))
    if applicant.credit_grade not in policy.credit_grades:
        out.append(Reason("credit", "社会信用等级需为 A 级",
                          f"social-credit grade must be {'/'.join(sorted(policy.credit_grades))}"
                          f" (now: {applicant.credit_grade or 'none'})"))
    if applicant.blacklisted:
        out.append(Reason("blacklisted", "申请人在黑名单中", "the applicant is blacklisted"))
    if purpose not in KNOWN_PURPOSES:
        out.append(Reason("purpose", "未知的使用目的", f"unknown purpose {purpose!r}"))
    elif purpose in COMMERCIAL_PURPOSES:
        out.append(Reason("commercial", "数据仅可用于非营利目的",
                          "data may only be used for non-profit purposes"))
    if not non_profit:
        out.append(Reason("declaration", "需声明非营利用途",
                          "the non-profit declaration is required"))
    return out


@dataclass(frozen=True)
class Assessment:
    """Eligibility with what it relied on: ``reasons`` are rules failed; ``unverified`` are
    rules met only on the applicant's word."""

    reasons: list[Reason]
    unverified: list[Reason]
    relied_on: dict[str, Basis]  # "title", "credit_grade"

    @property
    def eligible(self) -> bool:
        """May be submitted and reviewed."""
        return not self.reasons

    @property
    def approvable(self) -> bool:
        """May be approved: eligible on verified claims."""
        return not self.reasons and not self.unverified


def assess(applicant: Applicant, purpose: str, non_profit: bool,
           policy: EligibilityPolicy) -> Assessment:
    failed = reasons(applicant, purpose, non_profit, policy)
    codes = {r.code for r in failed}
    unverified = []
    if "title" not in codes and applicant.title_basis != Basis.VERIFIED:
        unverified.append(Reason("title_unverified",
                                 f"职称（{applicant.title}）为本人自报，尚未经管理员凭证明材料核验",
                                 f"the professional title ({applicant.title}) is self-declared;"
                                 f" no admin has verified it against evidence"))
    if "credit" not in codes and applicant.credit_basis != Basis.VERIFIED:
        unverified.append(Reason("credit_unverified",
                                 f"社会信用等级（{applicant.credit_grade}）为本人自报，尚未经管理员"
                                 f"凭证明材料核验",
                                 f"the social-credit grade ({applicant.credit_grade}) is "
                                 f"self-declared; no admin has verified it against evidence"))
    return Assessment(failed, unverified, {"title": applicant.title_basis,
                                           "credit_grade": applicant.credit_basis})


def check_approvable(applicant: Applicant, purpose: str, non_profit: bool,
                     policy: EligibilityPolicy) -> None:
    """Raise Ineligible unless every rule holds on verified claims."""
    found = assess(applicant, purpose, non_profit, policy)
    if not found.approvable:
        raise Ineligible(found.reasons + found.unverified)


def is_eligible(applicant: Applicant, purpose: str, non_profit: bool,
                policy: EligibilityPolicy) -> bool:
    return not reasons(applicant, purpose, non_profit, policy)


def check_eligible(applicant: Applicant, purpose: str, non_profit: bool,
                   policy: EligibilityPolicy) -> None:
    """Raise Ineligible listing every failed rule."""
    failed = reasons(applicant, purpose, non_profit, policy)
    if failed:
        raise Ineligible(failed)
