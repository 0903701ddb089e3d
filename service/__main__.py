"""`python -m service serve ...` is the same as `vecnest serve ...`."""

from service.cli import main

raise SystemExit(main())
