"""Controller-side data plane: synthetic raw extracts and their onboarding into restricted
datasets (de-identification, minimum-count generalisation, risk report, catalog metadata,
dummy data). Row-level data handled here never leaves the controller's machine except as
restricted Parquet read by the gateway."""
