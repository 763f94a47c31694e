"""The HTTP edge: the FastAPI app, its guard, routes, uploads and the dashboard."""
