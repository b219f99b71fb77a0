"""The daemon: start-up, the FUSE loop, the control socket, kernel tuning."""
from cachefs import fastpath

fastpath.preload()     # before anything imports pyfuse3: cachefs/fastpath.py says why
