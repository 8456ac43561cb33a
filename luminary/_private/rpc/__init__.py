"""Framing, authentication and connections shared by every Luminary process."""
