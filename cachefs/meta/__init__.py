"""Metadata in LMDB: schema.py documents the layout, store.py is the MetaStore."""
