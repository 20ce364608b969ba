"""Prints the worst ulp distance per backend and dtype after the parity run."""


def pytest_terminal_summary(terminalreporter):
    from .test_parity import WORST

    if not WORST:
        return
    terminalreporter.section("parity: worst ulp distance to the NumPy reference")
    for (backend, dtype), ulp in sorted(WORST.items()):
        terminalreporter.write_line(f"{backend:>18} {dtype:>9}: {ulp} ulp")
