"""`python -m cli …` is `incident-manager …`."""

from cli import main

main()
