"""Shared test set-up: the real-component fixtures (Redis, PostgreSQL, oidc-provider) for every test."""

pytest_plugins = ["tests.components.fixtures"]
