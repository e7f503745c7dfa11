"""The fixtures every test module may ask for by name, loaded as plugins from ``tests/fixtures/``.

Helpers that tests import by name are in ``tests/helpers.py`` and ``tests/admin_helpers.py``.
"""

pytest_plugins = ["tests.fixtures.app", "tests.fixtures.admin"]
