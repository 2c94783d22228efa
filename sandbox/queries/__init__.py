"""The query layer shared by the central gateway and the federated sites: what a question
may say (spec), how it is checked against a dataset (checks), and the bounded consented
view it reads (view)."""
