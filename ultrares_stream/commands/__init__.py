"""One module per ``ultrares`` sub-command. Each defines ``register(subparsers)``
and sets ``func`` on its parser; the work itself lives in the domain modules."""
