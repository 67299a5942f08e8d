"""`python -m tollhouse` runs the command line, like the `tollhouse` console script."""

from tollhouse.gateway.cli import main

raise SystemExit(main())
