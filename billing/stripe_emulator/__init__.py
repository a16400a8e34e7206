"""Offline Stripe: localstripe (PyPI) extended with what Hearth uses, served over real HTTP for `make run` and tests."""
