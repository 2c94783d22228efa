"""Eligibility, conflict-free panels, the scoring rubric and decisions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from approvals import assignment, eligibility, scoring
from approvals.decisions import Decision, Verdict, check_decision
from approvals.eligibility import Applicant, EligibilityPolicy
from approvals.errors import ConflictOfInterest, Ineligible, InvalidDecision
from approvals.scoring import Dimension, RubricConfig, Score
from approvals.states import Role

POLICY = EligibilityPolicy()
GOOD = Applicant(Role.RESEARCHER, "副主任医师", 8, "心血管流行病学", "A")


def test_a_senior_experienced_researcher_is_eligible():
    assert eligibility.is_eligible(GOOD, "medical_research", True, POLICY)
    eligibility.check_eligible(GOOD, "public_health", True, POLICY)


def test_every_failed_rule_is_reported_in_both_languages():
    weak = Applicant(Role.EXPERT, "主治医师", 2, "x", "B", blacklisted=True)
    with pytest.raises(Ineligible) as refused:
        eligibility.check_eligible(weak, "commercial_insurance", False, POLICY)
    codes = [r.code for r in refused.value.reasons]
    assert codes == ["role", "title", "experience", "credit", "blacklisted", "commercial",
                     "declaration"]
    title = refused.value.reasons[1]
    assert "副高级" in title.zh and "associate senior" in title.en
    assert "主治医师" in title.zh


def test_the_assessment_says_what_it_relied_on():
    declared = eligibility.assess(GOOD, "medical_research", True, POLICY)
    assert declared.eligible and not declared.approvable
    assert declared.relied_on == {"title": eligibility.Basis.SELF_DECLARED,
                                  "credit_grade": eligibility.Basis.SELF_DECLARED}
    assert [r.code for r in declared.unverified] == ["title_unverified", "credit_unverified"]
    assert "self-declared" in declared.unverified[0].en and "自报" in declared.unverified[0].zh
    with pytest.raises(Ineligible, match="self-declared"):
        eligibility.check_approvable(GOOD, "medical_research", True, POLICY)
    verified = replace(GOOD, title_basis=eligibility.Basis.VERIFIED,
                       credit_basis=eligibility.Basis.VERIFIED)
    found = eligibility.assess(verified, "medical_research", True, POLICY)
    assert found.approvable and found.relied_on["title"] == eligibility.Basis.VERIFIED
    eligibility.check_approvable(verified, "medical_research", True, POLICY)
    half = replace(GOOD, title_basis=eligibility.Basis.VERIFIED)
    assert [r.code for r in eligibility.assess(half, "medical_research", True,
                                               POLICY).unverified] == ["credit_unverified"]


def test_a_failed_claim_is_a_reason_not_a_verification_warning():
    junior = Applicant(Role.RESEARCHER, "主治医师", 8, "x", "B")
    found = eligibility.assess(junior, "medical_research", True, POLICY)
    assert [r.code for r in found.reasons] == ["title", "credit"] and not found.unverified


def test_thresholds_are_configuration():
    lenient = EligibilityPolicy(min_title_grade=2, min_years_experience=1)
    junior = Applicant(Role.RESEARCHER, "讲师", 2, "统计", "A")
    assert eligibility.is_eligible(junior, "medical_research", True, lenient)
    assert not eligibility.is_eligible(junior, "medical_research", True, POLICY)


# Institutions are registry ids: 1 岭南大学 / Lingnan University, 2 中山医院, 3 别处.
LINGNAN, ZHONGSHAN, ELSEWHERE = 1, 2, 3
CASE = assignment.Case("app-1", "u-1", LINGNAN, frozenset({"u-7", "陈静"}), "申请人",
                       ("岭南大学", "Lingnan University"))


@pytest.mark.parametrize(("expert", "reason"), [
    (assignment.Expert("u-2", "王强", LINGNAN), "applicant's institution"),
    (assignment.Expert("u-7", "李明", ZHONGSHAN), "member of the applicant's team"),
    (assignment.Expert("u-8", "陈静", ZHONGSHAN), "member of the applicant's team"),
    (assignment.Expert("u-8", "陈 静", ZHONGSHAN), "member of the applicant's team"),
    (assignment.Expert("u-9", "赵磊", ZHONGSHAN, frozenset({"app-1"})), "declared a conflict"),
    (assignment.Expert("u-9", "赵磊", ZHONGSHAN, frozenset({" APP-1 "})), "declared a conflict"),
    (assignment.Expert("u-9", "赵磊", ZHONGSHAN, declared_institutions=frozenset({LINGNAN})),
     "declared a conflict"),
    (assignment.Expert("u-1", "申请人", ELSEWHERE), "is the applicant"),
    (assignment.Expert("u-3", "孙悦", None), "awaits confirmation"),
])
def test_conflicted_experts_are_refused(expert, reason):
    assert not assignment.can_assign(expert, CASE)
    with pytest.raises(ConflictOfInterest, match=reason):
        assignment.check_can_assign(expert, CASE)


def test_the_institution_reason_names_it_in_both_languages():
    reason = assignment.conflict(assignment.Expert("u-2", "王强", LINGNAN), CASE)
    assert reason.zh == "王强与申请人同属岭南大学"
    assert reason.en == "王强 works at the applicant's institution (Lingnan University)"


def test_an_unconfirmed_applicant_institution_clears_nobody():
    unconfirmed = assignment.Case("app-2", "u-1", None)
    expert = assignment.Expert("u-2", "王强", ZHONGSHAN)
    assert assignment.conflict(expert, unconfirmed).code == "applicant_unconfirmed"


def test_conflicts_re_checked_later_find_the_ones_that_arose():
    panel = [assignment.Expert("e1", "甲", ZHONGSHAN), assignment.Expert("e2", "乙", LINGNAN),
             assignment.Expert("e3", "丙", ELSEWHERE,
                               declared_institutions=frozenset({LINGNAN}))]
    found = assignment.conflicted(panel, CASE)
    assert {k: r.code for k, r in found.items()} == {"e2": "institution", "e3": "declared"}


def test_a_panel_needs_three_unconflicted_experts():
    free = [assignment.Expert(f"e{i}", f"专家{i}", 10 + i) for i in range(3)]
    assignment.check_panel(free, CASE)
    with pytest.raises(InvalidDecision, match="at least 3"):
        assignment.check_panel(free[:2], CASE)


def score(expert: str, legality=4, consistency=4, value=4, risk=2, cost=3, remove=()):
    return Score(expert, {Dimension.LEGALITY: legality, Dimension.CONSISTENCY: consistency,
                          Dimension.VALUE: value, Dimension.LEAKAGE_RISK: risk,
                          Dimension.COST: cost}, remove_fields=frozenset(remove))


def test_leakage_risk_lowers_the_total():
    config = RubricConfig()
    assert scoring.weighted_total(score("a", risk=1), config) > \
        scoring.weighted_total(score("a", risk=5), config)
    best = score("a", 5, 5, 5, 1, 5)
    assert scoring.weighted_total(best, config) == 5.0


def test_summary_side_by_side_quorum_and_recommendation():
    config = RubricConfig()
    two = scoring.summarise([score("a"), score("b")], config)
    assert not two.quorum_met and two.recommendation == "pending"
    three = scoring.summarise([score("a"), score("b", remove=["department"]),
                               score("c", remove=["department"])], config)
    assert three.quorum_met and three.recommendation == "approve"
    assert set(three.per_expert) == {"a", "b", "c"}
    assert three.field_removals == {"department": 2}
    vetoed = scoring.summarise([score("a", legality=1), score("b"), score("c")], config)
    assert vetoed.recommendation == "reject"
    median = scoring.summarise([score("a", value=1), score("b"), score("c", value=5)],
                               RubricConfig(aggregation="median"))
    assert median.per_dimension[Dimension.VALUE] == 4


def test_scores_and_weights_are_validated():
    with pytest.raises(InvalidDecision, match="1 to 5"):
        score("a", legality=6)
    with pytest.raises(InvalidDecision, match="missing"):
        Score("a", {Dimension.LEGALITY: 3})
    with pytest.raises(InvalidDecision, match="every dimension"):
        RubricConfig(weights={Dimension.LEGALITY: 1.0})


def test_approval_terms_and_decision_rules():
    summary = scoring.summarise([score("a"), score("b"), score("c")], RubricConfig())
    fields = ["sex", "age_band", "department", "total_cost"]
    terms = check_decision(Decision(Verdict.APPROVE, "sound protocol",
                                    frozenset({"department"}), epsilon=1.0, term_months=12),
                           fields, summary)
    assert terms.fields == ("sex", "age_band", "total_cost") and terms.epsilon == 1.0
    assert check_decision(Decision(Verdict.REJECT, "commercial aims"), fields, summary) is None
    for bad, message in [
        (Decision(Verdict.APPROVE, "", epsilon=1, term_months=12), "reasons"),
        (Decision(Verdict.APPROVE, "ok", frozenset({"name"}), 1, 0, 12), "not requested"),
        (Decision(Verdict.APPROVE, "ok", epsilon=0, term_months=12), "set ε"),
        (Decision(Verdict.APPROVE, "ok", epsilon=1, term_months=99), "term"),
        (Decision(Verdict.APPROVE, "ok", frozenset(fields), 1, 0, 12), "at least one field"),
    ]:
        with pytest.raises(InvalidDecision, match=message):
            check_decision(bad, fields, summary)
    early = scoring.summarise([score("a")], RubricConfig())
    with pytest.raises(InvalidDecision, match="quorum"):
        check_decision(Decision(Verdict.REJECT, "no"), fields, early)


# The look-back: institutions held since the application's look-back date conflict too.
LOOKED_BACK = assignment.Case("app-3", "u-1", ELSEWHERE, applicant_name="申请人",
                              institution_names=("别处", "Elsewhere"),
                              former=frozenset({LINGNAN}), since="2026-01-05",
                              names={LINGNAN: ("岭南大学", "Lingnan University"),
                                     ELSEWHERE: ("别处", "Elsewhere")})


@pytest.mark.parametrize(("expert", "case"), [
    # left the applicant's institution (before or after assignment), holds another now
    (assignment.Expert("u-2", "王强", ZHONGSHAN, former=frozenset({LINGNAN})), CASE),
    # the applicant left the expert's institution after submitting
    (assignment.Expert("u-2", "王强", LINGNAN), LOOKED_BACK),
    # both left it
    (assignment.Expert("u-2", "王强", ZHONGSHAN, former=frozenset({LINGNAN})), LOOKED_BACK),
])
def test_an_institution_held_since_the_look_back_date_conflicts(expert, case):
    reason = assignment.conflict(expert, case)
    assert reason.code == ("institution" if expert.institution == case.institution
                           else "former_institution")
    with pytest.raises(ConflictOfInterest):
        assignment.check_can_assign(expert, case)


def test_the_look_back_reason_names_the_institution_and_the_date():
    reason = assignment.conflict(assignment.Expert("u-2", "王强", LINGNAN), LOOKED_BACK)
    assert reason.zh == "王强与申请人自 2026-01-05 以来都曾隶属岭南大学"
    assert reason.en == ("王强 and the applicant have both belonged to Lingnan University "
                         "since 2026-01-05")
    assert assignment.conflict(assignment.Expert("u-4", "周", ZHONGSHAN,
                                                 former=frozenset({ELSEWHERE + 10})),
                               LOOKED_BACK) is None


def test_a_chair_is_held_to_the_experts_rule_but_needs_no_institution_on_record():
    assert assignment.chair_conflict(assignment.Expert("c-1", "周主任", None), CASE) is None
    assert assignment.chair_conflict(assignment.Expert("c-1", "周主任", LINGNAN),
                                     CASE).code == "institution"
    assert assignment.chair_conflict(
        assignment.Expert("c-1", "周主任", None, former=frozenset({LINGNAN})),
        CASE).code == "former_institution"
    assert assignment.chair_conflict(assignment.Expert("c-1", "陈静", None), CASE).code == \
        "team"
    assert assignment.conflict(assignment.Expert("c-1", "周主任", None), CASE).code == \
        "expert_unconfirmed"
