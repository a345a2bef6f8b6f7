"""What the tests share, one home each:

- ``wait``: ``wait_until``, the one polling helper;
- ``toml``: relay.toml from parts (the ``write_config`` fixture and the fault harness use it);
- ``mocks``: ``MockSink(handler)`` and ``MockDevice(handler)``, relay's boundaries in memory;
- ``agent``: the real agent in a thread; ``common``: ``relay`` as a command, broker checks;
- ``mqtt``, ``http_server``, ``brokers``, ``faultproxy``: the far ends, real or private;
- ``commands``: what a device was asked, and the outcomes;
- ``spool_producer``: a process putting into a spool, for the kill test to SIGKILL.

Fixtures (``write_config``, ``mock_factory``, ``rabbit``, ...) are in tests/conftest.py.
"""
