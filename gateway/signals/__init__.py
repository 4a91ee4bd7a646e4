"""Shared Signals (SSF): Security Event Tokens pushed by an IdP that end sessions or deprovision agents."""
