"""A reference web app around one controller: JSON, Server-Sent Events, metrics and a live page.

Needs the ``web`` extra (``pip install -e '.[web]'``); start it against the
built-in fake Lemonade with ``python -m examples.webapp``.  See
:mod:`examples.webapp.app` for the routes.
"""

from examples.webapp.app import create_app

__all__ = ["create_app"]
