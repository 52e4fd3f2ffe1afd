"""The seven pretext and contrastive methods, one module each; resolved by name through ssl_core.registry."""
