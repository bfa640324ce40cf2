from gateway.cli.commands import entrypoint

entrypoint()
