"""Render the re-identification risk report of an onboarding run as Markdown."""

from __future__ import annotations


def _pct(share: float) -> str:
    return f"{share * 100:.2f} %"


def render_markdown(report: dict) -> str:
    """The report as Markdown, for controllers and the catalog."""
    d, rule = report["dataset"], report["rule"]
    lines = [
        f"# Re-identification risk report — {d['id']} {d['version']} ({d['grade']})",
        "",
        f"Minimum count: every combination of the quasi-identifiers "
        f"({', '.join(rule['quasi_identifiers'])}) must describe at least "
        f"{rule['minimum_count']} patients. Sensitive attribute: {rule['sensitive'] or '—'}.",
        "",
        *_table(report, rule["minimum_count"], "Generalisation"),
    ]
    for name, event in report.get("events", {}).items():
        r = event["rule"]
        lines += [
            "",
            f"## Event table `{name}`",
            "",
            f"Quasi-identifiers: {', '.join(r['quasi_identifiers'])}; sensitive attribute: "
            f"{r['sensitive'] or '—'}; the same minimum count, per table.",
            "",
            *_table(event, rule["minimum_count"], f"Generalisation of `{name}`", level="###"),
        ]
    ids = report["direct_identifiers"]
    lines += [
        "",
        "## Direct identifiers",
        "",
        f"Dropped by the spec: {', '.join(ids['dropped'])}.",
        f"Scanned by value (ID numbers, mobile phones, patient names): "
        f"{', '.join(ids['scanned_columns'])} — none found.",
        "",
    ]
    return "\n".join(lines)


def _table(part: dict, k: int, heading: str, level: str = "##") -> list[str]:
    """One table's measures, suppression and generalisation."""
    before, after, sup = part["before"], part["after"], part["suppression"]
    sensitive = part["rule"]["sensitive"]
    lines = [
        "| measure | before | after |",
        "|---|---:|---:|",
        f"| records | {before['records']:,} | {after['records']:,} |",
        f"| patients | {before['patients']:,} | {after['patients']:,} |",
        f"| classes | {before['classes']:,} | {after['classes']:,} |",
        f"| k (patients in smallest class) | {before['k_patients']} | {after['k_patients']} |",
        f"| k (records in smallest class) | {before['k_records']} | {after['k_records']} |",
        f"| records in classes < {k} patients | "
        f"{_pct(before['records_in_small_classes'])} | "
        f"{_pct(after['records_in_small_classes'])} |",
        f"| unique records | {_pct(before['unique_records'])} | "
        f"{_pct(after['unique_records'])} |",
        f"| l-diversity of {sensitive or '—'} | {before['l_diversity']} | "
        f"{after['l_diversity']} |",
        "",
        f"Suppressed: {sup['records']:,} records ({_pct(sup['share_of_records'])}), "
        f"{sup['patients']:,} patients lost entirely; "
        f"{sup['datafly_rounds']} generalisation round(s).",
        "",
        f"{level} {heading}",
        "",
        "Information lost per column: the share of the published records shown coarser "
        "than the spec's finest level, and the precision lost (each record's level over the "
        "hierarchy's height, averaged: 0 % every value at the finest level, 100 % every "
        "value `*`).",
        "",
        "| column | hierarchy | levels used | distinct before | distinct after | "
        "values lifted | records generalised | precision lost |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, g in part["generalisation"].items():
        lines.append(f"| {name} | {g['hierarchy']} | {', '.join(g['levels_used'])} | "
                     f"{g['distinct_before']:,} | {g['distinct_after']:,} | "
                     f"{g['values_lifted']:,} | {_pct(g['records_generalised'])} | "
                     f"{_pct(g['precision_lost'])} |")
    examples = [(name, v, to) for name, g in part["generalisation"].items()
                for v, to in list(g["examples"].items())[:8]]
    if examples:
        lines += ["", "Examples of values generalised:", ""]
        lines += [f"- {name}: `{v}` → `{to}`" for name, v, to in examples]
    return lines
