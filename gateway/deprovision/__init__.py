"""Deprovisioning: one pipeline for every trigger. Step 1 (this issue): disable and kill every session."""
