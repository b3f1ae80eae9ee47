"""The data domain."""
