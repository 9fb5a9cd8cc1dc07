"""Entry point `select` (not named select.py: that would shadow the standard library module): see
distill/phases/select.py."""

from distill.cli import run_phase

if __name__ == "__main__":
    run_phase("select")
