"""Security reports: the offboarding evidence pack of one agent and the PIPA monthly review (issue 5)."""
