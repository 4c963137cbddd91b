"""GENRE package."""
