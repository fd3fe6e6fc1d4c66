"""`python -m launcher` is the same program as the `launcher` console script."""

from __future__ import annotations

from launcher.cli.main import main

if __name__ == "__main__":
    main()
