"""Tools for testing cachefs against a misbehaving S3 endpoint (not used by the daemon)."""
