"""`python -m qwen25.cli` (torchrun uses it)."""

from qwen25.cli import main

if __name__ == "__main__":
    main()
