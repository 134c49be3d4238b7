"""`python -m gateway` runs the fedgate CLI."""

from gateway.cli import main

main()
