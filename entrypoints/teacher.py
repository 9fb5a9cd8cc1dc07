"""Entry point `teacher`: see distill/phases/teacher.py for what it does and its parameters."""

from distill.cli import run_phase

if __name__ == "__main__":
    run_phase("teacher")
