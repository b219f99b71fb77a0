# The two commands: `make demo` and `make test`. Both set the machine up first (Debian 12, root).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo lint test test-fast bench bench-full bench-writes clean fuzz torch

setup:
	@bash scripts/setup-debian.sh

demo: setup
	$(PY) -m cachefs.devtools.demo

# ruff (lint and import order), mypy (types) and import-linter (the layer contracts), all configured
# in pyproject.toml. `make test` runs it first: a broken contract or a type error fails the build.
# All three run (to report everything at once); any failure fails the target.
lint: setup
	@rc=0; \
	$(VENV)/bin/ruff check . || rc=1; \
	$(VENV)/bin/mypy || rc=1; \
	$(VENV)/bin/lint-imports --no-logo || rc=1; \
	exit $$rc

test: setup lint torch
	$(PY) -m pytest -q

# torch for cachefs.torch's tests (the sampler wrapper with a real DataLoader): installed once into
# the venv by `make test`, not by `make demo` (PyPI's wheel with its CUDA libraries is ~5 GB).
torch: setup
	@$(PY) -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q -e ".[torch]"

# The two cheapest tiers (pytest markers, tests/conftest.py): units and the in-process fs tests.
# No mount, no S3 server; under a minute.
test-fast: setup
	$(PY) -m pytest -q -m "unit or inproc"

# The model-based random test (tests/test_fsrand.py) for FUZZ_MINUTES (new seeds each round, printed;
# failures kept in tests/.fsrand-db and replayed first by the next run). `make test` runs a short version.
FUZZ_MINUTES ?= 20
fuzz: setup
	CACHEFS_FSRAND_PROFILE=fuzz CACHEFS_FSRAND_MINUTES=$(FUZZ_MINUTES) $(PY) -m pytest -q -s tests/test_fsrand.py

bench: setup
	$(PY) -m bench.run --short

bench-full: setup
	$(PY) -m bench.run --full

bench-writes: setup
	$(PY) -m bench.writes

clean:
	rm -rf .venv build *.egg-info bench/results

# The container image without a Docker engine (debootstrap + image/oci.py; image/build.sh), and
# its check in a chroot (cachefs --version, csi --help, a real mount, the CSI mounter). Not in `test`.
.PHONY: image image-test
image:
	bash image/build.sh

image-test: setup image
	CACHEFS_IMAGE_LAYOUT=build/image/oci $(PY) -m pytest -q tests/csi/test_image.py
