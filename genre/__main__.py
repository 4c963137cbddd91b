"""python -m genre."""

from genre.cli import main

main()
