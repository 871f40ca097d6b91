"""Shared pytest setup for every tier.

This conftest sits in tests/ (no __init__.py), so pytest puts tests/ on sys.path: tests import the
builders as `from builders import make_job` and the scenario loader as `from scenarios.loader import
load_scenario`. Fixtures shared by several tiers belong here; tier-specific ones next to the tier.
"""
