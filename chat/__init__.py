"""Loupe's chat application: Chainlit handlers (app.py) and the plain modules they call."""
