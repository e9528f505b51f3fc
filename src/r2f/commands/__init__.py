"""One module per CLI command; each registers itself on :data:`r2f.commands._app.app` (:mod:`r2f.cli` runs it).

:mod:`r2f.cli` imports every command module at start-up, which must not load torch (``r2f --help`` stays fast;
tests/test_imports.py): a command imports what needs torch, transformers or matplotlib inside its function, under
a comment saying so; light modules are imported at the top.
"""
