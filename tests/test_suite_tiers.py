"""The fast tier's guard (conftest.py): a test not marked slow that spends too much CPU fails, named."""

import conftest

BUSY_TESTS = """
import time

import pytest


def spend_cpu(seconds):
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_unmarked():
    spend_cpu(0.3)


@pytest.mark.slow
def test_marked_slow():
    spend_cpu(0.3)


def test_quick():
    pass
"""


def test_an_unmarked_test_over_the_limit_fails_naming_itself(pytester, monkeypatch):
    pytester.makeini("[pytest]\nmarkers = slow\n")
    pytester.makepyfile(test_busy=BUSY_TESTS)
    with monkeypatch.context() as patch:  # this test itself runs under the real limit
        patch.setattr(conftest, "FAST_TEST_CPU_SECONDS", 0.1)
        result = pytester.inline_run(plugins=[conftest])
    passed, _, failed = result.listoutcomes()
    assert [report.nodeid for report in failed] == ["test_busy.py::test_unmarked"]
    assert {report.nodeid for report in passed} == {"test_busy.py::test_marked_slow", "test_busy.py::test_quick"}
    message = str(failed[0].longrepr)
    assert "test_busy.py::test_unmarked is in the fast tier" in message and "mark it @pytest.mark.slow" in message
