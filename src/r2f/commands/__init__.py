"""One module per CLI command; each registers itself on :data:`r2f.cli.app`."""
