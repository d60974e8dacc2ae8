from vaultk8s.cli.main import run

run()
