"""cachefs benchmark harness (issue 3): `python -m bench.run --short|--full`.

Benchmarks are not tests: everything here prints figures and writes JSON under bench/results/<timestamp>/.
Layout: endpoint (Ceph RGW or moto) + proxy (optional latency) -> dataset (uploaded once) -> systems
(mount/unmount every filesystem under test) -> workloads (fio, loader, metadata) -> report (table, plots).
"""
