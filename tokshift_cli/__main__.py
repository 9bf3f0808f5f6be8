"""`python -m tokshift_cli ...` (also what torchrun runs)."""

from .cli import main

if __name__ == "__main__":
    main()
