"""`python -m gpt2kit ...` is the `gpt2kit` command."""

from gpt2kit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
