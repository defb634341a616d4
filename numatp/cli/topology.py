"""Placeholder: this command arrives with its own module."""
