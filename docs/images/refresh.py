"""Copy the screenshots the role guides show from the browser tests' output into
docs/images/, under stable names, shrunk for the repository.

The guides (docs/guide-researcher.md, docs/guide-committee.md, docs/guide-controller.md)
show only pictures the tests take while they click through the product, so a picture can
be refreshed whenever the product changes:

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/browser -q
    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/hub/test_demo.py tests/hub/test_login.py -q
    .venv/bin/python docs/images/refresh.py

(tests/hub needs the project's Docker engine, as `make test` starts it.) Each picture is
cut to its first ``MAX_HEIGHT`` pixels where a page is very long, scaled to ``WIDTH``
pixels wide and palette-quantised, so that all of them together stay small. A picture
that a test did not leave behind is named with the test that takes it, and nothing is
written until every one is found.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
WIDTH = 1000  # pixels; the screenshots are 1280 wide
MAX_HEIGHT = 2400  # pixels of the original kept from the top of a long page


@dataclass(frozen=True)
class Shot:
    source: str  # file name (a glob: the approval flow numbers its shots) in ARTIFACTS
    test: str  # the test that takes it
    max_height: int = MAX_HEIGHT


APPROVAL = "tests/browser/test_approval_flow.py"
INTEGRITY = "tests/browser/test_committee_integrity.py"
CONTROLLER = "tests/browser/test_controller.py"
EXPORTS = "tests/browser/test_export_review.py"
STEP_UP = "tests/browser/test_step_up.py"
DEMO = "tests/hub/test_demo.py"
LOGIN = "tests/hub/test_login.py"

SHOTS: dict[str, Shot] = {
    # signing in (every role)
    "sign-in.png": Shot("demo-01-sign-in.png", DEMO),
    "sign-in-code.png": Shot("demo-02-code.png", DEMO),
    # researcher
    "researcher-register.png": Shot("[0-9][0-9]-researcher-register.png", APPROVAL),
    "researcher-totp-enrolment.png": Shot("[0-9][0-9]-totp-enrolment.png", APPROVAL),
    "researcher-catalog.png": Shot("[0-9][0-9]-researcher-catalog.png", APPROVAL),
    "researcher-new-application.png": Shot("[0-9][0-9]-researcher-new-application.png",
                                           APPROVAL),
    "researcher-draft.png": Shot("[0-9][0-9]-researcher-draft.png", APPROVAL),
    "researcher-submitted.png": Shot("[0-9][0-9]-researcher-submitted.png", APPROVAL),
    "researcher-ineligible.png": Shot("[0-9][0-9]-ineligible-refused-with-reasons.png",
                                      APPROVAL),
    "researcher-agreement.png": Shot("[0-9][0-9]-researcher-agreement.png", APPROVAL),
    "researcher-agreement-signed.png": Shot("[0-9][0-9]-dua-signed.png", APPROVAL),
    "researcher-agreement-step-up.png": Shot(
        "stepup-09-agreement-download-asks-for-a-fresh-code.png", STEP_UP),
    "researcher-agreement-wrong-code.png": Shot(
        "stepup-10-agreement-download-wrong-code-refused.png", STEP_UP),
    "researcher-my-applications.png": Shot("demo-03a-my-applications.png", DEMO),
    "researcher-project-ready.png": Shot("demo-03-project-ready.png", DEMO),
    "researcher-jupyterlab.png": Shot("demo-04-jupyterlab.png", DEMO),
    "researcher-dp-answer.png": Shot("demo-05-dp-answer.png", DEMO),
    "researcher-other-sandbox-refused.png": Shot("hub-03-other-sandbox-refused.png", LOGIN),
    "researcher-export-step-up.png": Shot(
        "stepup-01-export-request-asks-for-a-fresh-code.png", STEP_UP),
    "researcher-export-wrong-code.png": Shot(
        "stepup-02-export-request-wrong-code-refused.png", STEP_UP),
    "researcher-export-sent.png": Shot("stepup-03-export-requested-with-a-fresh-code.png",
                                       STEP_UP),
    "researcher-export-confirm.png": Shot("controller-researcher-export-confirm.png",
                                          CONTROLLER),
    "researcher-certificate-returned.png": Shot(
        "controller-researcher-certificate-returned.png", CONTROLLER),
    # committee: chair, experts, admin
    "chair-assign-experts.png": Shot("[0-9][0-9]-chair-assign-experts.png", APPROVAL),
    "chair-conflicted-expert-refused.png": Shot(
        "[0-9][0-9]-conflicted-expert-refused.png", APPROVAL),
    "chair-case-variant-refused.png": Shot("integrity-case-variant-refused.png", INTEGRITY),
    "chair-institution-to-confirm.png": Shot("integrity-institution-to-confirm.png",
                                             INTEGRITY),
    "expert-scores.png": Shot("[0-9][0-9]-expert-1-scores.png", APPROVAL),
    "expert-declares-conflict.png": Shot("integrity-expert-declares-conflict.png", INTEGRITY),
    "expert-refused-at-scoring.png": Shot(
        "integrity-conflict-after-assignment-refused-at-scoring.png", INTEGRITY),
    "chair-side-by-side-decision.png": Shot("[0-9][0-9]-chair-side-by-side-decision.png",
                                            APPROVAL),
    "chair-approval-refused-self-declared.png": Shot(
        "integrity-approval-refused-on-self-declared-claims.png", INTEGRITY),
    "chair-conflicted-score-flagged.png": Shot("integrity-conflicted-score-flagged.png",
                                               INTEGRITY, 1500),
    "chair-quorum-short.png": Shot("integrity-conflicted-score-excluded-at-decision.png",
                                   INTEGRITY),
    "chair-approved-on-verified.png": Shot("integrity-approved-on-verified-claims.png",
                                           INTEGRITY),
    "admin-credentials-verified.png": Shot("[0-9][0-9]-admin-credentials-verified.png",
                                           APPROVAL),
    "admin-disguised-evidence-refused.png": Shot("integrity-disguised-evidence-refused.png",
                                                 INTEGRITY),
    # controller
    "controller-audit-verified.png": Shot("controller-01-audit-verified.png", CONTROLLER),
    "controller-audit-tampering.png": Shot("controller-06-audit-tampering-caught.png",
                                           CONTROLLER),
    "controller-projects.png": Shot("controller-02-projects-budget.png", CONTROLLER),
    "controller-export-returned.png": Shot("exports-01-disguises-returned.png", EXPORTS),
    "controller-export-first-vote.png": Shot("controller-07-export-first-vote.png",
                                             CONTROLLER),
    "controller-export-approved.png": Shot("controller-08-export-approved.png", CONTROLLER),
    "controller-preview-notebook.png": Shot("exports-02-preview-analysis-ipynb.png", EXPORTS),
    "controller-preview-pdf.png": Shot("exports-02-preview-report-pdf.png", EXPORTS, 700),
    "controller-release-step-up.png": Shot("stepup-04-release-asks-for-a-fresh-code.png",
                                           STEP_UP),
    "controller-release-wrong-code.png": Shot("stepup-05-release-wrong-code-refused.png",
                                              STEP_UP),
    "controller-released.png": Shot("stepup-06-released-with-a-fresh-code.png", STEP_UP),
    "controller-download-step-up.png": Shot(
        "stepup-07-bundle-download-asks-for-a-fresh-code.png", STEP_UP),
    "controller-destruction-rejected.png": Shot("controller-03-destruction-rejected.png",
                                                CONTROLLER),
    "controller-destruction-verified.png": Shot("controller-04-destruction-verified.png",
                                                CONTROLLER),
    "controller-blacklisted.png": Shot("controller-05-blacklisted.png", CONTROLLER),
}


def find(source: str, artifacts: Path) -> Path | None:
    """The newest file matching ``source`` (an earlier run may have left older numbers)."""
    found = sorted(artifacts.glob(source), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def shrink(source: Path, target: Path, max_height: int) -> None:
    """Cut a long page, scale it to WIDTH, and store it as an optimised palette PNG."""
    with Image.open(source) as opened:
        picture = opened.convert("RGB")
    if picture.height > max_height:
        picture = picture.crop((0, 0, picture.width, max_height))
    if picture.width > WIDTH:
        height = round(picture.height * WIDTH / picture.width)
        picture = picture.resize((WIDTH, height), Image.Resampling.LANCZOS)
    # no dithering: flat page colours and text stay crisp, and compress far better
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                     dither=Image.Dither.NONE).save(target, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="artifacts", type=Path, default=ARTIFACTS,
                        help="where the browser tests left their screenshots")
    args = parser.parse_args(argv)
    sources = {name: find(shot.source, args.artifacts) for name, shot in SHOTS.items()}
    missing = sorted({SHOTS[name].test for name, path in sources.items() if path is None})
    if missing:
        for name, path in sources.items():
            if path is None:
                print(f"missing: {SHOTS[name].source} (taken by {SHOTS[name].test})",
                      file=sys.stderr)
        print("run these tests first: " + " ".join(missing), file=sys.stderr)
        return 1
    for name, path in sources.items():
        shrink(path, HERE / name, SHOTS[name].max_height)
    total = sum((HERE / name).stat().st_size for name in SHOTS)
    print(f"{len(SHOTS)} pictures in {HERE.relative_to(ROOT)}, {total / 1e6:.2f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
