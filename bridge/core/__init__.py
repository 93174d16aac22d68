"""The work engine: pure decisions about records, tasks, offsets and partitions.

Standard library only, no I/O and no clock of its own (the caller passes the time): the
consumer loop (:mod:`bridge.loop`) feeds it events and carries out what it decides. A test
(``tests/unit/test_engine_imports.py``) keeps it that way.
"""
