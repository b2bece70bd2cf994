"""Kubernetes names that may reach an API path: the rules, in one place, with no imports.

A Secret's name (like a namespace's) is a DNS-1123 subdomain and its keys are config-map keys,
as Kubernetes itself validates them; the CRD declares the same patterns for every ``*SecretRef``
(tests/unit/test_config.py holds the two together). ``config`` checks a spec with them and
``kube`` checks again where it builds a URL path, so a name such as ``../../ns/secrets/x`` never
reaches the apiserver (docs/security.md, T1).
"""

from __future__ import annotations

import re

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
MAX_LENGTH = 253

_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN_PATTERN)
_SECRET_KEY = re.compile(SECRET_KEY_PATTERN)


def dns_subdomain_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS subdomain (a Secret's or a namespace's name), else None."""
    if len(name) > MAX_LENGTH or not _DNS_SUBDOMAIN.fullmatch(name):
        return (
            f"{name[:80]!r} is not a DNS subdomain name (lower-case letters, digits, '-' and '.',"
            f" starting and ending with a letter or digit, at most {MAX_LENGTH} characters)"
        )
    return None


def secret_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Secret key, else None."""
    if len(key) > MAX_LENGTH or not _SECRET_KEY.fullmatch(key) or key in (".", ".."):
        return (
            f"{key[:80]!r} is not a Secret key: letters, digits, '-', '_' and '.' only"
            f" (not '.' or '..'), at most {MAX_LENGTH} characters"
        )
    return None
