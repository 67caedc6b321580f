"""`python -m crossgap_index`: the `cgx` command line."""

from crossgap_index.cli.app import main

main()
