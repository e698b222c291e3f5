"""`python -m bitkeras ...` is the `bitkeras` command."""

from bitkeras.cli import main

raise SystemExit(main())
