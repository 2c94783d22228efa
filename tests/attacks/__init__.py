"""Attacks on the portal's guarantees over its real boundary (``sandboxctl portal serve``
beside a gateway process, HTTP clients each from their own loopback address). Each test
asserts the guarantee, so each FAILS while the weakness exists; on f6e1f3b every test here
fails except ``test_signin_race.py[sqlite]`` (the SQLite engine serialises the lost update
that PostgreSQL lets through).

- ``test_signin_race.py``: parallel wrong codes outrun the five-code lockout (PostgreSQL).
- ``test_signin_enrolment.py``: a secret seen before enrolment is the one enrolled.
- ``test_export_leaks.py``: rows in notebook/PDF metadata pass and leave unseen; marks a
  file can cancel; the released SVG unmarked without a code; an export request with no
  fresh code.
- ``test_export_disguises.py``: thirteen disguises the automated checks pass.
- ``test_committee_integrity.py``: an expert steps out of the applicant's institution; a
  look-alike institution added; a verification of a value the admin never saw."""
