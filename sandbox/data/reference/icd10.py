"""ICD-10 reference: the diagnoses the synthetic extract draws from, and the code hierarchy
(code → category → block → chapter) that onboarding generalises rare diagnoses along.

Names are the Chinese terms of the national clinical edition (国家临床版). Chapters are
complete; blocks are listed for every category the generator emits, and any other code
falls back to its chapter at the block level (documented in docs/data-model.md).
"""

from __future__ import annotations

from dataclasses import dataclass

# Chapter ranges are inclusive on the three-character category.
CHAPTERS: tuple[tuple[str, str, str, str], ...] = (
    ("I", "A00", "B99", "某些传染病和寄生虫病"),
    ("II", "C00", "D48", "肿瘤"),
    ("III", "D50", "D89", "血液及造血器官疾病和某些涉及免疫机制的疾患"),
    ("IV", "E00", "E90", "内分泌、营养和代谢疾病"),
    ("V", "F00", "F99", "精神和行为障碍"),
    ("VI", "G00", "G99", "神经系统疾病"),
    ("VII", "H00", "H59", "眼和附器疾病"),
    ("VIII", "H60", "H95", "耳和乳突疾病"),
    ("IX", "I00", "I99", "循环系统疾病"),
    ("X", "J00", "J99", "呼吸系统疾病"),
    ("XI", "K00", "K93", "消化系统疾病"),
    ("XII", "L00", "L99", "皮肤和皮下组织疾病"),
    ("XIII", "M00", "M99", "肌肉骨骼系统和结缔组织疾病"),
    ("XIV", "N00", "N99", "泌尿生殖系统疾病"),
    ("XV", "O00", "O99", "妊娠、分娩和产褥期"),
    ("XVI", "P00", "P96", "起源于围生期的某些情况"),
    ("XVII", "Q00", "Q99", "先天性畸形、变形和染色体异常"),
    ("XVIII", "R00", "R99", "症状、体征和临床与实验室异常所见"),
    ("XIX", "S00", "T98", "损伤、中毒和外因的某些其他后果"),
    ("XX", "V01", "Y98", "疾病和死亡的外因"),
    ("XXI", "Z00", "Z99", "影响健康状态和与保健机构接触的因素"),
    ("XXII", "U00", "U85", "用于特殊目的的编码"),
)

BLOCKS: tuple[tuple[str, str, str], ...] = (
    ("A00", "A09", "肠道传染病"),
    ("A15", "A19", "结核病"),
    ("A50", "A64", "主要为性传播模式的感染"),
    ("B15", "B19", "病毒性肝炎"),
    ("B20", "B24", "人类免疫缺陷病毒[HIV]病"),
    ("C15", "C26", "消化器官恶性肿瘤"),
    ("C30", "C39", "呼吸和胸腔内器官恶性肿瘤"),
    ("C50", "C50", "乳房恶性肿瘤"),
    ("C51", "C58", "女性生殖器官恶性肿瘤"),
    ("C60", "C63", "男性生殖器官恶性肿瘤"),
    ("D65", "D69", "凝血缺陷、紫癜和其他出血性情况"),
    ("E10", "E14", "糖尿病"),
    ("E70", "E90", "代谢紊乱"),
    ("F20", "F29", "精神分裂症、分裂型和妄想性障碍"),
    ("F30", "F39", "心境[情感]障碍"),
    ("G70", "G73", "肌神经接头和肌肉疾病"),
    ("H25", "H28", "晶状体疾患"),
    ("I10", "I15", "高血压病"),
    ("I20", "I25", "缺血性心脏病"),
    ("I60", "I69", "脑血管病"),
    ("J00", "J06", "急性上呼吸道感染"),
    ("J09", "J18", "流行性感冒和肺炎"),
    ("J40", "J47", "慢性下呼吸道疾病"),
    ("K20", "K31", "食管、胃和十二指肠疾病"),
    ("K35", "K38", "阑尾疾病"),
    ("K70", "K77", "肝疾病"),
    ("L20", "L30", "皮炎和湿疹"),
    ("M15", "M19", "关节病"),
    ("M50", "M54", "其他背部病"),
    ("N17", "N19", "肾衰竭"),
    ("N30", "N39", "泌尿系统的其他疾病"),
    ("O20", "O29", "主要与妊娠有关的其他孕产妇疾患"),
    ("O80", "O84", "分娩"),
    ("Q90", "Q99", "染色体异常，不可归类在他处者"),
    ("R50", "R69", "全身性症状和体征"),
    ("S50", "S59", "肘和前臂损伤"),
    ("Z00", "Z13", "为检查和调查而与保健机构接触的人"),
)


@dataclass(frozen=True)
class Diagnosis:
    """One code the generator can emit, with who gets it and how it is treated."""

    code: str
    name: str
    department: str
    weight: float  # relative frequency among visits of an eligible patient
    sex: str | None = None  # "男"/"女" when only one sex can have it
    age_min: int = 0
    age_max: int = 120
    profile: str = "flat"  # flat | old | child | repro | adult
    chronic: bool = False  # patients keep it across visits
    inpatient: float = 0.08  # probability that a visit for it is an admission
    cost: float = 1.0  # cost multiplier
    sensitive: str = ""  # the guide's special categories


DIAGNOSES: tuple[Diagnosis, ...] = (
    Diagnosis("J06.9", "急性上呼吸道感染", "呼吸内科", 14.0, profile="child", inpatient=0.01),
    Diagnosis("J18.9", "肺炎", "呼吸内科", 3.0, profile="child", inpatient=0.45, cost=1.5),
    Diagnosis("J45.9", "哮喘", "呼吸内科", 1.5, chronic=True, inpatient=0.05),
    Diagnosis("J44.9", "慢性阻塞性肺疾病", "呼吸内科", 2.0, age_min=40, profile="old",
              chronic=True, inpatient=0.25, cost=1.4),
    Diagnosis("I10", "原发性高血压", "心血管内科", 12.0, age_min=25, profile="old",
              chronic=True, inpatient=0.03),
    Diagnosis("I25.1", "动脉粥样硬化性心脏病", "心血管内科", 4.0, age_min=35, profile="old",
              chronic=True, inpatient=0.3, cost=2.0),
    Diagnosis("I63.9", "脑梗死", "神经内科", 2.5, age_min=40, profile="old",
              inpatient=0.7, cost=2.5),
    Diagnosis("E11.9", "2型糖尿病", "内分泌科", 9.0, age_min=25, profile="old",
              chronic=True, inpatient=0.05),
    Diagnosis("E78.5", "高脂血症", "内分泌科", 5.0, age_min=25, profile="old", chronic=True),
    Diagnosis("E84.9", "囊性纤维化", "呼吸内科", 0.0008, age_max=40, chronic=True,
              inpatient=0.4, cost=3.0, sensitive="genetic"),
    Diagnosis("E70.0", "经典型苯丙酮尿症", "儿科", 0.006, age_max=30, profile="child",
              chronic=True, inpatient=0.1, sensitive="genetic"),
    Diagnosis("K29.7", "胃炎", "消化内科", 6.0, age_min=10, profile="adult"),
    Diagnosis("K35.8", "急性阑尾炎", "普外科", 1.0, age_min=5, age_max=70, profile="adult",
              inpatient=0.85, cost=2.0),
    Diagnosis("K74.6", "肝硬化", "消化内科", 0.6, age_min=30, profile="old", chronic=True,
              inpatient=0.5, cost=2.5),
    Diagnosis("B18.1", "慢性乙型病毒性肝炎", "感染科", 2.5, age_min=10, profile="adult",
              chronic=True, inpatient=0.05),
    Diagnosis("A09", "感染性腹泻", "消化内科", 3.0, profile="child", inpatient=0.05),
    Diagnosis("A15.0", "肺结核", "感染科", 0.4, age_min=10, profile="adult", chronic=True,
              inpatient=0.4, cost=1.8),
    Diagnosis("A53.9", "梅毒", "皮肤性病科", 0.35, age_min=16, age_max=80, profile="adult",
              sensitive="std"),
    Diagnosis("A54.9", "淋球菌感染", "皮肤性病科", 0.15, age_min=16, age_max=70,
              profile="adult", sensitive="std"),
    Diagnosis("B24", "人类免疫缺陷病毒[HIV]病", "感染科", 0.06, age_min=16, age_max=85,
              profile="adult", chronic=True, inpatient=0.2, cost=2.0, sensitive="hiv"),
    Diagnosis("C34.9", "支气管或肺恶性肿瘤", "肿瘤科", 0.9, age_min=35, profile="old",
              chronic=True, inpatient=0.6, cost=5.0, sensitive="malignant"),
    Diagnosis("C16.9", "胃恶性肿瘤", "肿瘤科", 0.5, age_min=35, profile="old", chronic=True,
              inpatient=0.6, cost=5.0, sensitive="malignant"),
    Diagnosis("C22.0", "肝细胞癌", "肿瘤科", 0.45, age_min=30, profile="old", chronic=True,
              inpatient=0.6, cost=5.0, sensitive="malignant"),
    Diagnosis("C18.9", "结肠恶性肿瘤", "肿瘤科", 0.35, age_min=35, profile="old", chronic=True,
              inpatient=0.6, cost=5.0, sensitive="malignant"),
    Diagnosis("C50.9", "乳房恶性肿瘤", "肿瘤科", 0.6, sex="女", age_min=25, profile="adult",
              chronic=True, inpatient=0.5, cost=4.5, sensitive="malignant"),
    Diagnosis("C53.9", "宫颈恶性肿瘤", "妇科", 0.03, sex="女", age_min=25, age_max=85,
              profile="adult", chronic=True, inpatient=0.6, cost=4.5, sensitive="malignant"),
    Diagnosis("C56", "卵巢恶性肿瘤", "妇科", 0.02, sex="女", age_min=25, profile="adult",
              chronic=True, inpatient=0.6, cost=4.5, sensitive="malignant"),
    Diagnosis("C61", "前列腺恶性肿瘤", "泌尿外科", 0.25, sex="男", age_min=50, profile="old",
              chronic=True, inpatient=0.5, cost=4.0, sensitive="malignant"),
    Diagnosis("D66", "遗传性因子VIII缺乏", "血液科", 0.006, sex="男", chronic=True,
              inpatient=0.3, cost=3.0, sensitive="genetic"),
    Diagnosis("F20.9", "精神分裂症", "精神科", 0.5, age_min=15, profile="adult",
              chronic=True, inpatient=0.3, cost=1.5, sensitive="psychiatric"),
    Diagnosis("F32.9", "抑郁发作", "精神科", 1.5, age_min=12, profile="adult",
              chronic=True, sensitive="psychiatric"),
    Diagnosis("F31.9", "双相情感障碍", "精神科", 0.3, age_min=15, profile="adult",
              chronic=True, inpatient=0.2, sensitive="psychiatric"),
    Diagnosis("G71.0", "肌营养不良", "神经内科", 0.004, sex="男", age_max=40, profile="child",
              chronic=True, inpatient=0.3, cost=2.0, sensitive="genetic"),
    Diagnosis("Q90.9", "唐氏综合征", "儿科", 0.02, age_max=60, profile="child", chronic=True,
              inpatient=0.1, sensitive="genetic"),
    Diagnosis("H25.9", "老年性白内障", "眼科", 2.0, age_min=50, profile="old",
              inpatient=0.2, cost=1.5),
    Diagnosis("L30.9", "皮炎", "皮肤科", 2.5),
    Diagnosis("M17.9", "膝关节病", "骨科", 2.5, age_min=40, profile="old", chronic=True),
    Diagnosis("M54.5", "下背痛", "骨科", 3.0, age_min=18, profile="adult"),
    Diagnosis("S52.5", "桡骨下端骨折", "骨科", 0.8, profile="flat", inpatient=0.3, cost=1.8),
    Diagnosis("N18.9", "慢性肾脏病", "肾内科", 1.2, age_min=30, profile="old", chronic=True,
              inpatient=0.2, cost=2.0),
    Diagnosis("N39.0", "泌尿道感染", "肾内科", 2.0, sex="女", age_min=5, profile="adult"),
    Diagnosis("O24.4", "妊娠期糖尿病", "产科", 0.5, sex="女", age_min=18, age_max=45,
              profile="repro", sensitive="pregnancy"),
    Diagnosis("O80", "单胎顺产", "产科", 1.5, sex="女", age_min=18, age_max=45,
              profile="repro", inpatient=0.95, cost=1.5, sensitive="pregnancy"),
    Diagnosis("R50.9", "发热", "急诊科", 3.0, profile="child"),
    Diagnosis("Z00.0", "一般医学检查", "体检中心", 5.0, age_min=18),
)


def category(code: str) -> str:
    """The three-character category of a code (C53.9 → C53)."""
    return code[:3]


def block_of(code: str) -> tuple[str, str]:
    """(block id such as "C51-C58", Chinese name); a code outside the listed blocks gets its
    chapter instead, so the hierarchy stays total."""
    cat = category(code)
    for start, end, name in BLOCKS:
        if start <= cat <= end:
            return f"{start}-{end}", name
    numeral, name = chapter_of(code)
    return numeral, name


def chapter_of(code: str) -> tuple[str, str]:
    """(chapter numeral such as "II", Chinese name)."""
    cat = category(code)
    for numeral, start, end, name in CHAPTERS:
        if start <= cat <= end:
            return numeral, name
    raise ValueError(f"{code!r} is not an ICD-10 code")
