"""Unit-tier pytest hooks: a loud line at the end of the run when trace-dependent tests were skipped.

Tests that need the public traces skip with a reason that names the missing files and
`leitstand traces fetch` (tests/unit/test_inflation.py); `-ra` lists each of them, and this hook adds
one line that counts them, in red, after the summary, so a run without traces cannot pass for a run
that checked fidelity.
"""

from __future__ import annotations

import pytest

FETCH = "leitstand traces fetch"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    missing = [r for r in skipped if isinstance(r.longrepr, tuple) and FETCH in str(r.longrepr[2])]
    if missing:
        terminalreporter.write_sep(
            "!",
            f"{len(missing)} test(s) SKIPPED because trace files are missing: fidelity against the published "
            f"results was NOT checked; run `{FETCH}`",
            red=True,
            bold=True,
        )
