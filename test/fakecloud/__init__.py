"""fakecloud: a stateful local emulator of the Hetzner Cloud API for tests and labs.

Run it with ``python test/fakecloud --help``; drive it from pytest through
``fakecloud.pytest_plugin``.
"""
