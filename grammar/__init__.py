"""The .mesh grammar (package data)."""
