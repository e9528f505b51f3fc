"""One module per CLI command; each registers itself on :data:`r2f.commands._app.app` (:mod:`r2f.cli` runs it)."""
