"""``python -m simic.consumer``: the same as the ``simic-consumer`` command."""

from .cli import main

main()
