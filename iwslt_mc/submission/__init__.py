"""Submission: packaging (package), re-verification (check), names and test sets (names), description.txt and
size measures (description), hypothesis files and decode logs (files); provenance and the report."""
