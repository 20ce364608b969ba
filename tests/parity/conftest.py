"""Prints the worst distances per backend and dtype after the parity run."""


def pytest_terminal_summary(terminalreporter):
    from .harness import WORST

    if not WORST:
        return
    terminalreporter.section("parity: worst distance to the NumPy reference")
    for (backend, dtype, what), value in sorted(WORST.items()):
        terminalreporter.write_line(f"{backend:>18} {dtype:>9} {what:>24}: {value:.3g}")
