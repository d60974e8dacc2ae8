import sys

from vaultk8s.cli.main import run

if __name__ == "__main__":  # bootstrap's key processes (spawn) import this module again as __mp_main__
    sys.exit(run())
