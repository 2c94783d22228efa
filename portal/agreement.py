"""The data use agreement (DUA) as a PDF with the project's terms, in Chinese and English,
following the guide's "transfer and use" rules: confidentiality, term, no resale, sharing
or commercial model training, destruction at the end, liability."""

from __future__ import annotations

from datetime import datetime

from portal.pdf import TextPdf

CLAUSES: tuple[tuple[str, str], ...] = (
    ("保密：数据使用方对通过数据沙箱获得的一切信息承担保密义务。",
     "Confidentiality: the user keeps everything obtained through the sandbox confidential."),
    ("用途限定：数据仅用于本协议载明的非营利研究目的。",
     "Purpose: the data serve only the non-profit research purpose stated here."),
    ("禁止转售、共享数据，禁止用于训练商业模型。",
     "No resale, no sharing, and no training of commercial models."),
    ("仅可在数据沙箱内分析，仅差分隐私统计结果经审核后可导出。",
     "Analysis only inside the sandbox; only reviewed differentially private results leave."),
    ("期满销毁：期限届满时书面通知数据控制方并提交销毁证明。",
     "Destruction: at the end of the term the user notifies the controller in writing and "
     "submits a destruction certificate."),
    ("违约责任：违约者列入黑名单并依法承担法律责任；发表成果须注明数据来源。",
     "Liability: violators are blacklisted and bear legal liability; publications cite the "
     "data source."),
)


def render(project: str, researcher: str, institution: str, datasets: list[str],
           fields: list[str], purpose: str, epsilon: float, delta: float, term_months: int,
           signed_at: datetime) -> bytes:
    doc = TextPdf(f"DUA {project}")
    line = doc.line
    line("数据使用协议 / Data Use Agreement", 16, 10)
    line(f"项目 / Project: {project}")
    line(f"使用方 / User: {researcher} ({institution})")
    line(f"数据集 / Datasets: {', '.join(datasets)}")
    line(f"字段 / Fields: {', '.join(fields)}")
    line(f"目的 / Purpose: {purpose}")
    line(f"隐私预算 / Privacy budget: ε = {epsilon:g}, δ = {delta:g}")
    line(f"期限 / Term: {term_months} 个月 / months")
    doc.space(4)
    for number, (zh, en) in enumerate(CLAUSES, 1):
        line(f"{number}. {zh}")
        line(f"   {en}", 9)
    doc.space(6)
    line(f"签署 / Signed: {researcher}, {signed_at.isoformat(timespec='seconds')}")
    return doc.bytes()
