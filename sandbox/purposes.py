"""The purposes a patient consents to or refuses separately: the basic scope (medical
research) and the six extended purposes of the authorisation template. A project is
granted one purpose; the gateway answers it only from patients who consented to it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Purpose:
    id: str  # also the consent table's column
    zh: str
    en: str


PURPOSES: tuple[Purpose, ...] = (
    Purpose("medical_research", "医学研究", "medical research"),
    Purpose("third_party_research", "第三方合作研究", "third-party cooperative research"),
    Purpose("commercial_development", "商业开发", "commercial development"),
    Purpose("public_health", "公共卫生统计与政策制定", "public health statistics and policy"),
    Purpose("ai_training", "人工智能诊断系统训练", "AI diagnostic system training"),
    Purpose("professional_training", "专业培训", "professional training"),
    Purpose("commercial_insurance", "商业保险定价与理赔",
            "commercial insurance pricing and claims"),
)
IDS: tuple[str, ...] = tuple(p.id for p in PURPOSES)
ALL = "*"  # a withdrawal from every purpose
