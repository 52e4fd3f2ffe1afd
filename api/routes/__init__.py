"""The /v1 routers, one module per resource; each owns its prefix."""
