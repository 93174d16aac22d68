"""``python -m bridge`` is ``ckb``."""

from bridge.cli import main

main()
