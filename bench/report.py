"""results.json -> results.md (markdown tables, median with min-max over runs) and PNG plots."""
from __future__ import annotations

import os
from collections import defaultdict

from bench import util

MiB = 1 << 20

# The headline figure of each workload (the rest stays in results.json).
HEADLINE = {"ttfb-large": ("lat_ms_p50", "p50 ms"), "ttfb-tiny": ("lat_ms_p50", "p50 ms"),
            "seq-1job": ("mib_s", "MiB/s"), "seq-4jobs": ("mib_s", "MiB/s"), "rand": ("iops", "IOPS")}


def summaries(rows: list[dict]) -> dict:
    """{(workload, job, state, system): {metric: {min, median, max, n, failed}}}, errors kept apart."""
    grouped: dict = defaultdict(lambda: defaultdict(list))
    errors: dict = defaultdict(list)
    for r in rows:
        key = (r["workload"], r["job"], r["state"], r["system"])
        if r.get("error"):
            errors[key].append(r["error"])
            continue
        for metric, value in r.items():
            if isinstance(value, (int, float)) and metric != "run":
                grouped[key][metric].append(value)
    out = {key: {m: util.summarize(v) for m, v in metrics.items()} for key, metrics in grouped.items()}
    return {"figures": out, "errors": dict(errors)}


def cell(summary: dict, key, metric: str, digits: int = 0) -> str:
    s = summary["figures"].get(key, {}).get(metric)
    if s is None:
        errs = summary["errors"].get(key)
        return "failed" if errs else "-"
    fmt = f"{{:,.{digits}f}}"
    text = fmt.format(s["median"])
    if s["n"] > 1:
        text += f" ({fmt.format(s['min'])}-{fmt.format(s['max'])})"
    if s["failed"]:
        text += f" [{s['failed']} failed]"
    return text


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _load(avg) -> str:
    return "/".join(f"{x:.1f}" for x in avg) if avg else "?"


def systems_in(results: dict) -> list[str]:
    return list(results.get("systems", {}))


def _ceiling_table(s: dict) -> list[str]:
    """The cheapest client's ceilings (bench/curlprobe.py) beside boto3's, when the probe measured them."""
    rows = []
    for label in ("backend", "through-proxy"):
        key = ("endpoint", label, "-", "synthetic")
        if "curl_image16_gets_s" in s["figures"].get(key, {}):
            rows.append([label] + [cell(s, key, metric, d) for metric, d in (
                ("curl_image16_gets_s", 0), ("boto3_image_gets_s", 0), ("curl_image64_gets_s", 0),
                ("curl_image16_cpu_ms_per_get", 2), ("curl_range8_mib_s", 0), ("boto3_parallel8_mib_s", 0),
                ("curl_range16_mib_s", 0), ("curl_range8_cpu_s_per_gib", 2), ("curl_list_pages_s", 1))])
    if not rows:
        return []
    return ["", "Ceilings with the cheapest client (pycurl, bench/curlprobe.py) beside boto3's:",
            table(["", "110 KB GETs/s, 16 parallel", "boto3", "pycurl, 64 parallel", "client CPU ms/GET",
                   "4 MiB, 8 parallel MiB/s", "boto3", "pycurl, 16 parallel", "client CPU-s/GiB",
                   "LIST pages/s (1,000 keys)"], rows)]


PEERS = ("s3fs", "rclone")


def _median(s: dict, key, metric: str) -> float | None:
    fig = s["figures"].get(key, {}).get(metric)
    return fig["median"] if fig else None


def _per_run(rows: list[dict], workload: str, job: str, state: str, system: str, fn) -> dict | None:
    """min/median/max over runs of fn(row) for one cell (rows without an error and with fn's inputs)."""
    values = []
    for r in rows:
        if (r.get("workload"), r.get("job"), r.get("state"), r.get("system")) == (workload, job, state, system) \
                and not r.get("error"):
            try:
                values.append(fn(r))
            except (KeyError, ZeroDivisionError, TypeError):
                pass
    return util.summarize(values) if values else None


def _fmt(fig: dict | float | None, digits: int = 2) -> str:
    if fig is None:
        return "-"
    if isinstance(fig, dict):
        text = f"{fig['median']:,.{digits}f}"
        return text + (f" ({fig['min']:,.{digits}f}-{fig['max']:,.{digits}f})" if fig.get("n", 1) > 1 else "")
    return f"{fig:,.{digits}f}"


def _verdict(value: float | None, target: float, at_most: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value <= target if at_most else value >= target) else "missed"


def goal_rows(results: dict, s: dict, system: str = "cachefs") -> list[list[str]]:
    """Issue 17's goals, each as the figure of this run (median over runs, min-max), its target and
    whether the median meets it. Ratios are of medians measured side by side in this run."""
    rows_in, names = results["rows"], systems_in(results)
    latency = bool(results.get("latency_ms")) or results.get("proxy", "off") not in ("off", None, "")
    peers = [p for p in PEERS if p in names]
    out: list[list[str]] = []

    def goal(what: str, value, target: float, at_most: bool, digits: int = 2) -> None:
        median = value["median"] if isinstance(value, dict) else value
        bound = f"<= {target:g}" if at_most else f">= {target:g}"
        out.append([what, _fmt(value, digits), bound, _verdict(median, target, at_most)])

    goal("daemon CPU per cold 110 KB file, ms (image folder, epoch 1)",
         _per_run(rows_in, "loader", "images", "epoch1", system,
                  lambda r: 1000 * r["daemon_cpu_s"] / r["images"]), 1.2, True)
    goal("daemon CPU per cold GiB sequential, s (fio seq-1job)",
         _per_run(rows_in, "fio", "seq-1job", "cold", system,
                  lambda r: r["daemon_cpu_s"] / (r["io_mib"] / 1024)), 0.5, True)
    # With the latency model on, the filesystems see the delayed endpoint: their bounds are its figures.
    seen = ("endpoint", "through-proxy" if latency else "backend", "-", "synthetic")
    epoch = _median(s, ("loader", "images", "epoch1", system), "images_per_s")
    ceiling = _median(s, seen, "curl_image64_gets_s")
    goal(f"cold image epoch 1 / endpoint's 110 KB GETs/s at 64 in flight (pycurl, {seen[1]})",
         epoch / ceiling if epoch and ceiling else None, 0.7, False)
    best = max((v for p in peers if (v := _median(s, ("loader", "images", "epoch1", p), "images_per_s"))),
               default=None)
    goal(f"cold image epoch 1 / best peer ({'/'.join(peers) or 'none run'})",
         epoch / best if epoch and best else None, 5.0 if latency else 2.0, False)
    backend = _median(s, ("endpoint", "backend", "-", "synthetic"), "parallel8_mib_s")
    seq = {n: _median(s, ("fio", "seq-4jobs", "cold", n), "mib_s") for n in (system, "s3fs")}
    if backend and seq[system] and seq["s3fs"]:
        goal("cold seq-4jobs fraction of the endpoint, minus s3fs's", (seq[system] - seq["s3fs"]) / backend, 0.0,
             False)
    rand = {n: _median(s, ("fio", "rand", "cold", n), "iops") for n in (system, "s3fs")}
    goal("cold random 64 KiB IOPS / s3fs's", rand[system] / rand["s3fs"] if rand[system] and rand["s3fs"] else None,
         1.2, False)
    bound = _median(s, seen, "curl_rand64k_1_gets_s")
    if bound and rand[system]:
        out.append(["  cold random IOPS / one-at-a-time 64 KiB GETs/s (pycurl; the bound at amplification 1)",
                    _fmt(rand[system] / bound), "-", "context"])
    for n in [system, *peers]:
        sent = _per_run(rows_in, "fio", "rand", "cold", n, lambda r: r["endpoint_sent_mib"] / r["io_mib"])
        if sent:
            out.append([f"  endpoint bytes sent / bytes read, cold random, {n}", _fmt(sent), "-", "context"])
    goal("read amplification, cold random 64 KiB (S3 bytes / bytes read)",
         _per_run(rows_in, "fio", "rand", "cold", system, lambda r: r["daemon_s3_get_bytes"] / (r["io_mib"] * MiB)),
         1.5, True)
    if "cachefs-base" in names:     # bench.run --baseline: nothing warm gets slower
        cells = [("fio", job, state, "mib_s" if job != "rand" else "iops") for job in ("seq-1job", "seq-4jobs", "rand")
                 for state in ("warm-disk", "warm-page")]
        cells += [("loader", shape, "epoch2", "images_per_s") for shape in ("tfrecord", "images")]
        for workload, job, state, metric in cells:
            ours, base = (_median(s, (workload, job, state, n), metric) for n in (system, "cachefs-base"))
            out.append([f"  {workload} {job} {state}: cachefs / cachefs-base (before)",
                        _fmt(ours / base if ours and base else None), "~1 (noise)", "context"])
    for key in sorted({k[1] for k in s["figures"] if k[0] == "metadata"}):
        for state, bound in (("warm", 2.0), ("cold", 1.0)):
            ours, theirs = (_median(s, ("metadata", key, state, n), "seconds") for n in (system, "rclone"))
            goal(f"{state} ls -lR of {key}: seconds / rclone's", ours / theirs if ours and theirs else None,
                 bound, True)
    return out


def goal_rows_18(results: dict, s: dict, system: str = "cachefs") -> list[list[str]]:
    """Issue 18's goals: epoch 1 of the image folders with the order sent first (+hint), with a
    manifest, against the endpoint's own 110 KB GET rate at 64 in flight and against the peers."""
    latency = bool(results.get("latency_ms")) or results.get("proxy", "off") not in ("off", None, "")
    peers = [p for p in PEERS if p in systems_in(results)]
    seen = ("endpoint", "through-proxy" if latency else "backend", "-", "synthetic")
    ceiling = _median(s, seen, "curl_image64_gets_s")
    out: list[list[str]] = []

    def epoch1(job: str, name: str = system) -> float | None:
        return _median(s, ("loader", job, "epoch1", name), "images_per_s")

    for shape in ("imagenet", "images"):
        dirs = "1,000" if shape == "imagenet" else "100"
        hinted, plain = epoch1(f"{shape}+hint"), epoch1(shape)
        best = max((v for p in peers if (v := epoch1(shape, p))), default=None)
        for variant in ("", "+hint", "+manifest", "+manifest+hint"):
            v = epoch1(shape + variant)
            if v is not None:
                out.append([f"{shape} ({dirs} directories) epoch 1{variant or ' (no hints)'}, img/s",
                            _fmt(s["figures"][("loader", shape + variant, "epoch1", system)]["images_per_s"], 0),
                            "-", "context"])
        if hinted and ceiling:
            out.append([f"{shape} epoch 1 with hints / endpoint's 110 KB GETs/s at 64 in flight ({seen[1]})",
                        _fmt(hinted / ceiling), ">= 0.8", _verdict(hinted / ceiling, 0.8, False)])
        if hinted and best:
            target = 10.0 if latency else None
            out.append([f"{shape} epoch 1 with hints / best peer ({'/'.join(peers)})", _fmt(hinted / best),
                        f">= {target:g}" if target else "-", _verdict(hinted / best, target, False) if target
                        else "context"])
        if hinted and plain:
            ratio = hinted / plain
            out.append([f"{shape} epoch 1 with hints / without", _fmt(ratio), ">= 1 (never slower)",
                        "met" if ratio >= 1 else "within 5% (noise)" if ratio >= 0.95 else "missed"])
    return out


def markdown(results: dict) -> str:
    s = summaries(results["rows"])
    names = systems_in(results)
    m = results["machine"]
    ep = results.get("endpoint", {})
    parts = [
        f"# Benchmark results {results['started_utc']}",
        f"Command: `{results['command']}` ({results['runs']} runs, {results['seconds']:.0f} s). "
        f"Cells: median (min-max) over runs.",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['fio']}, {m['s3fs']}, {m['rclone']}. Load average (1/5/15 min) "
        f"{_load(m.get('loadavg_at_start'))} at the start, {_load(m.get('loadavg_at_end'))} at the end "
        f"(other work shares this machine).",
        f"Endpoint: **{ep.get('kind', '?')}** - {ep.get('note', '')}. "
        f"Latency proxy: **{results.get('proxy', 'off')}**.",
        f"Loader: decode+crop {'on' if results['decode'] else 'off'}, consume rate "
        f"{results['consume_rate'] or 'unpaced'}.",
    ]
    parts += [f"**Note:** {n}" for n in results.get("notes", [])]
    parts += ["", "Systems: " + "; ".join(f"`{k}` = {v}" for k, v in results.get("systems", {}).items())]

    probe_rows = []
    for label in ("backend", "through-proxy"):
        key = ("endpoint", label, "-", "synthetic")
        if key in s["figures"] or key in s["errors"]:
            probe_rows.append([label] + [cell(s, key, metric, d) for metric, d in
                                         (("single_stream_mib_s", 0), ("parallel8_mib_s", 0),
                                          ("get_1k_ms_p50", 1), ("get_1k_ms_p99", 1), ("endpoint_cpu_s_per_gib", 1),
                                          ("image_gets_s", 0), ("disk_direct_mib_s", 0),
                                          ("disk_direct64_mib_s", 0))])
    ceiling_client = next((r["ceiling_client"] for r in results.get("rows", []) if r.get("ceiling_client")), "boto3")
    if probe_rows:
        parts += ["", f"## The endpoint itself (ranged GETs; 8 parallel and 110 KB ceilings with {ceiling_client}, "
                      "the rest with boto3)",
                  table(["", "4 MiB, 1 stream MiB/s", "4 MiB, 8 parallel MiB/s", "1 KiB GET p50 ms", "p99 ms",
                         "endpoint CPU-s/GiB", "110 KB GETs/s, 16 parallel",
                         "cache disk: 4 MiB O_DIRECT reads, 16 parallel, MiB/s", "... 64 parallel, MiB/s"],
                  probe_rows)]
        parts += _ceiling_table(s)

    fio_rows, cpu_rows = [], []
    for job, (metric, unit) in HEADLINE.items():
        for state in ("cold", "warm-disk", "warm-page"):
            key = lambda name: ("fio", job, state, name)  # noqa: E731
            if not any(key(n) in s["figures"] or key(n) in s["errors"] for n in names):
                continue
            fio_rows.append([f"{job} {state} ({unit})"] + [cell(s, key(n), metric, 1 if unit == "p50 ms" else 0)
                                                           for n in names])
            if job == "seq-1job":
                cpu_rows.append([f"{job} {state}"] + [
                    f"{cell(s, key(n), 'daemon_cpu_s', 2)} s / {cell(s, key(n), 'daemon_peak_rss_mib')} MiB"
                    for n in names])
    if fio_rows:
        parts += ["", "## fio", table(["job, state"] + names, fio_rows)]
        backend = s["figures"].get(("endpoint", "backend", "-", "synthetic"), {}).get("parallel8_mib_s")
        if backend:
            ratio = []
            for n in names:
                seq = s["figures"].get(("fio", "seq-4jobs", "cold", n), {}).get("mib_s")
                no_s3 = n in ("local", "memfs")
                ratio.append("n/a (no S3)" if no_s3 else f"{seq['median'] / backend['median']:.0%}" if seq else "-")
            parts += ["", "Cold seq-4jobs as a fraction of the endpoint's 8-parallel ranged-GET throughput "
                          f"(measured with {ceiling_client}):",
                      table(["", *names], [["cold / backend", *ratio]])]
        parts += ["", "Daemon CPU seconds / peak RSS during seq-1job:", table(["", *names], cpu_rows)]

    loader_names = ["synthetic"] + names
    rows = []
    jobs = {k[1] for k in s["figures"] if k[0] == "loader"}
    for shape in [j for j in ("tfrecord", "images", "imagenet") if j in jobs] + sorted(jobs - {"tfrecord", "images",
                                                                                                "imagenet"}):
        epochs = sorted({k[2] for k in s["figures"] if k[0] == "loader" and k[1] == shape})
        for epoch in epochs:
            key = lambda name: ("loader", shape, epoch, name)  # noqa: E731
            rows.append([f"{shape} {epoch} img/s"] + [cell(s, key(n), "images_per_s") for n in loader_names])
            for ref in ("synthetic", "local"):
                base = s["figures"].get(key(ref), {}).get("images_per_s")
                if base and ref in loader_names:
                    rows.append([f"  ratio to {ref}"] + [
                        f"{s['figures'][key(n)]['images_per_s']['median'] / base['median']:.2f}"
                        if key(n) in s["figures"] else "-" for n in loader_names])
            rows.append(["  % of an 8-GPU node"] + [cell(s, key(n), "pct_of_8gpu_node", 1) for n in loader_names])
            if results.get("consume_rate"):
                rows.append(["  % of --consume-rate"] + [cell(s, key(n), "pct_of_consume_rate", 1)
                                                         for n in loader_names])
    if rows:
        parts += ["", "## ResNet-50-style loader", table(["shape, epoch"] + loader_names, rows),
                  "", "`% of an 8-GPU node`: images/s over 7,767 img/s, the field report's synthetic-data rate "
                      "(31,068.8 img/s on 4 nodes of 8 V100) for one node."]

    meta_rows = []
    for key in sorted({k[1:3] for k in s["figures"] if k[0] == "metadata"} |
                      {k[1:3] for k in s["errors"] if k[0] == "metadata"}):
        meta_rows.append([f"ls -lR {key[0]} {key[1]} (s)"] + [cell(s, ("metadata", *key, n), "seconds", 2)
                                                               for n in names])
    if meta_rows:
        parts += ["", "## Metadata", table(["tree, state"] + names, meta_rows)]

    if "cachefs" in names:
        parts += ["", "## Issue 17's goals (cachefs; ratios of medians measured side by side in this run)",
                  table(["goal", "figure", "target", ""], goal_rows(results, s))]
        rows18 = goal_rows_18(results, s)
        if rows18:
            parts += ["", "## Issue 18's goals (cachefs's image folders, epoch 1; ratios of medians in this run)",
                      table(["goal", "figure", "target", ""], rows18)]

    errors = [f"- run {r['run']} {r['workload']} {r['system']} {r['job']} {r['state']}: "
              f"{r['error'].strip().splitlines()[0][:300]}" for r in results["rows"] if r.get("error")]
    if errors:
        parts += ["", "## Failures", *errors]
    return "\n".join(parts) + "\n"


def _bars(ax, groups, series, value, title, ylabel) -> None:
    """Grouped bars: one group per x label, one bar per series, whiskers from min to max over runs."""
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        meds, lo, hi = [], [], []
        for g in groups:
            v = value(g, name)
            meds.append(v["median"] if v else 0)
            lo.append(v["median"] - v["min"] if v else 0)
            hi.append(v["max"] - v["median"] if v else 0)
        ax.bar([j + i * width for j in range(len(groups))], meds, width, yerr=[lo, hi], label=name, capsize=2)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")  # local, page cache and S3 differ by orders of magnitude


def _panel_figure(plt, panels: list, draw, width: float, path: str) -> str | None:
    """One row of subplots, one per panel, drawn by draw(ax, panel); saved as a PNG."""
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        draw(ax, panel)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(results: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = summaries(results["rows"])["figures"]
    names = systems_in(results)

    def fio_panel(ax, job):
        _bars(ax, ["cold", "warm-disk", "warm-page"], names,
              lambda state, n: s.get(("fio", job, state, n), {}).get("mib_s"), f"fio {job}", "MiB/s")

    def loader_panel(ax, shape):
        epochs = sorted({k[2] for k in s if k[0] == "loader" and k[1] == shape})
        _bars(ax, epochs, ["synthetic"] + names,
              lambda ep, n: s.get(("loader", shape, ep, n), {}).get("images_per_s"), f"loader: {shape}", "images/s")

    jobs = [j for j in ("seq-1job", "seq-4jobs", "rand") if any(k[0] == "fio" and k[1] == j for k in s)]
    shapes = [sh for sh in ("tfrecord", "images") if any(k[0] == "loader" and k[1] == sh for k in s)]
    written = [_panel_figure(plt, jobs, fio_panel, 6, os.path.join(out, "fio_throughput.png")),
               _panel_figure(plt, shapes, loader_panel, 7, os.path.join(out, "loader_images_per_s.png"))]
    return [w for w in written if w]


def write(results: dict, out: str) -> None:
    text = markdown(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print("\n" + text, flush=True)
    try:
        results_plots = plots(results, out)
    except Exception as exc:  # noqa: BLE001 - plots are a convenience; the table and JSON are the record
        print(f"plots failed: {exc}", flush=True)
        return
    print("plots: " + ", ".join(results_plots), flush=True)
