"""Experimental APIs (Ray's ``ray.experimental`` names)."""
