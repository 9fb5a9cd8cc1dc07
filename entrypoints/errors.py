"""Entry point `errors`: see distill/phases/errors.py for what it does and its parameters."""

from distill.cli import run_phase

if __name__ == "__main__":
    run_phase("errors")
