"""The dashboard under ``/ui/``: Jinja2 templates and static assets shipped as package data.

``TEMPLATES`` and ``STATIC`` are the folders; the routes live in ``api.routes.ui``, the session
cookie in ``api.ui.session``. Vendored third-party files (uPlot, Redoc) and their licences are under
``static/vendor`` (see ``static/vendor/NOTICE``).
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
