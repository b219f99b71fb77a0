from setuptools import setup

# Metadata lives in pyproject.toml; the native extension is added here when it exists.
setup()
