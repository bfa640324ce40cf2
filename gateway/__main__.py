from gateway.cli import entrypoint

entrypoint()
