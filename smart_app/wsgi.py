"""WSGI entry for any server: `gunicorn 'smart_app.wsgi:application'` (settings from PRM_* variables)."""

from smart_app.app import create_app

application = create_app(start_background=True)
