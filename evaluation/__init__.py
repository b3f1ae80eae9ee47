"""Evaluation harness: suites, scorers and reports."""
