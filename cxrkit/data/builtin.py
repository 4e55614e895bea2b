"""Imports the built-in dataset adapters so they register themselves."""
