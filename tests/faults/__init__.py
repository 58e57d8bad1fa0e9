"""Fault-injection suite (issue 8). A package, so its conftest does not replace ``tests/conftest.py``
as the module ``conftest`` that other test files import from."""
