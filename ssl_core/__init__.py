"""pretextlab's ML engine. Kept free of imports so that `import ssl_core.specs` does not load torch."""
