"""`python -m bitkeras ...` is the `bitkeras` command."""

from bitkeras.jobs.cli import main

raise SystemExit(main())
