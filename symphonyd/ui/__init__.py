"""The web dashboard's static files (static/): plain JavaScript modules, no build step,
served by every node at /ui/ (symphonyd/api/ui.py). Nothing here runs in the daemon."""
