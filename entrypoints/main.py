"""Entry point `main`: see distill/phases/main/__init__.py for what it does and its parameters."""

from distill.cli import run_phase

if __name__ == "__main__":
    run_phase("pipeline")
