"""``python -m worker``."""

from .cli import main

raise SystemExit(main())
