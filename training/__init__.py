"""Training code: not part of the app; run from the repository root with python3 -m."""
