"""Data plane of the secondary-use sandbox: onboarding, gateway, HE and the researcher
client."""
