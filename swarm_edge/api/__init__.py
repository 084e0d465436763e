"""The HTTP face of swarm-edge: app (FastAPI), schemas, server (Unix socket, lock, peer check), client."""
