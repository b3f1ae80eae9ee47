"""The posttrain domain."""
