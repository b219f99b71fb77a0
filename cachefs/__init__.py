"""cachefs: a FUSE caching filesystem for S3-compatible object storage, for deep-learning training."""
__version__ = "0.1.0"
