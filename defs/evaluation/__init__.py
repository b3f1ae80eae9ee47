"""The evaluation domain."""
