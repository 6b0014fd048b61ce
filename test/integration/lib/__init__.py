"""Helpers for Legate's integration tests: the legate process, its admin
endpoint, bootstrap builders, upstream servers and protocol clients."""
