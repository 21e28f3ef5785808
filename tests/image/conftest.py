"""Reports the image module's measurements (build times, size) in the terminal summary."""

from __future__ import annotations

import pytest

# Lines for the summary, filled by tests/image/test_image.py through the fixture below.
REPORT: list[str] = []


@pytest.fixture(scope="session")
def image_report() -> list[str]:
    return REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("product image")
        for line in REPORT:
            terminalreporter.write_line(line)
