"""The curator review app (``corpus review``): taxonomy, proposals, documents and flags of
one run, served locally.

Importing this package is cheap and imports no web framework: ``builder.review.flags`` is
used by assembly. ``builder.review.app.create_app`` builds the ASGI app and
``builder.review.server.serve`` runs it.
"""
