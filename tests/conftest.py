"""Shared pytest configuration: each fixture family lives in its own plugin module."""

pytest_plugins = [
    "tests.fixtures.testbed",
    "tests.fixtures.manager",
    "tests.fixtures.image",
    "tests.fixtures.operator",
    "tests.fixtures.monitoring",
]
