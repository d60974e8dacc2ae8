import sys

from vaultk8s.cli.main import run

sys.exit(run())
