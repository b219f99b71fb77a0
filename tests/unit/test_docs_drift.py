"""Docs that cannot drift: the option table, `Config`, `cachefs mount --help` and
docs/CONFIGURATION.md agree; every counter the code keeps is declared in `cachefs.stats` and listed
in docs/METRICS.md; docs/ARCHITECTURE.md's module list is the package tree; the module paths,
commands and flags the docs name exist. Pure file and AST reading: no mount, no S3.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from cachefs import metrics, stats
from cachefs.cli.main import make_parser
from cachefs.config import OPTION_BY_NAME, OPTIONS, Config, build_config, parse_size

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "cachefs"
DOCS = ROOT / "docs"


# -- markdown -----------------------------------------------------------------------------------------
def tables(text: str) -> list[list[list[str]]]:
    """Every table of a markdown text: rows of cells, header first, the |---| line left out."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r":?-*:?", c) for c in cells):
                current.append(cells)
        elif current:
            out.append(current)
            current = []
    return out


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def section(text: str, heading: str) -> str:
    """From `heading` (a '## ' line) to the next heading of that level."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else len(text)]


# -- options --------------------------------------------------------------------------------------------
CONFIGURATION = DOCS / "CONFIGURATION.md"
NOT_OPTIONS = {"source", "mountpoint", "ignored_env"}   # Config fields that are arguments or found while merging
NOT_OPTION_FLAGS = {"help", "config", "ready_fd"}       # mount flags that are no option: -h, --config FILE, internal
# Options whose documented default is a description, not a value to parse.
DESCRIBED_DEFAULTS = {
    "endpoint_url": "AWS's, or boto3's AWS_ENDPOINT_URL",
    "region": "from the AWS config",
    "cache_dir": "named after a hash of endpoint, bucket and prefix",
    "uid": "the mounting user's", "gid": "the mounting user's",
    "staging_dir": "found by the daemon in the fastest disk tier",
}
# Options left None in Config whose default someone else resolves, and to what.
RESOLVED_ELSEWHERE = {"metrics_addr": metrics.DEFAULT_ADDR}


def mount_parser() -> argparse.ArgumentParser:
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["mount"]


def documented_options() -> dict[str, list[str]]:
    """Option name -> its row in a CONFIGURATION.md table whose first column is 'option'."""
    rows: dict[str, list[str]] = {}
    for table in tables(CONFIGURATION.read_text()):
        if table[0][0] != "option":
            continue
        for row in table[1:]:
            for name in ticked(row[0]):
                assert name not in rows, f"{name} documented twice in {CONFIGURATION.name}"
                rows[name] = row
    return rows


def test_every_option_is_a_config_field_and_every_field_an_option():
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names)) == len(OPTION_BY_NAME)
    fields = {f.name for f in dataclasses.fields(Config)}
    assert NOT_OPTIONS <= fields
    no_field, no_option = sorted(set(names) - fields), sorted(fields - NOT_OPTIONS - set(names))
    assert not no_field, f"options without a Config field: {no_field}"
    assert not no_option, f"Config fields without an option: {no_option}"


def test_every_option_is_in_mount_help_with_its_help_text():
    parser = mount_parser()
    by_flag = {s: a for a in parser._actions for s in a.option_strings}
    squeezed_help = "".join(parser.format_help().split())     # argparse re-wraps the lines
    for opt in OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        action = by_flag.get(flag)
        assert action is not None and action.dest == opt.name, f"{flag} missing from `cachefs mount`"
        assert action.help == opt.help
        assert flag in squeezed_help and "".join(opt.help.split()) in squeezed_help, f"{flag} not in --help"
    flags = {a.dest for a in parser._actions if a.option_strings}
    extra = flags - set(OPTION_BY_NAME)
    assert extra == NOT_OPTION_FLAGS, f"mount flags not in the option table: {sorted(extra - NOT_OPTION_FLAGS)}"


def test_configuration_md_documents_exactly_the_options():
    documented = set(documented_options())
    missing, unknown = sorted(set(OPTION_BY_NAME) - documented), sorted(documented - set(OPTION_BY_NAME))
    assert not missing, f"options missing from {CONFIGURATION.name}: {missing}"
    assert not unknown, f"{CONFIGURATION.name} documents options that do not exist: {unknown}"
    assert set(DESCRIBED_DEFAULTS) | set(RESOLVED_ELSEWHERE) <= set(OPTION_BY_NAME)


def test_documented_defaults_are_the_defaults():
    cfg = build_config("s3://bucket", "/mnt", {}, environ={})      # what a mount with no options gets
    wrong = []
    for name, row in documented_options().items():
        opt, cell = OPTION_BY_NAME[name], row[1]
        resolved = getattr(cfg, name)
        if resolved is None:
            resolved = RESOLVED_ELSEWHERE.get(name)
        first_word = cell.split()[0].lower() if cell else ""
        if name in DESCRIBED_DEFAULTS:
            continue
        if not cell.startswith("`") and first_word not in ("true", "false", "none"):
            wrong.append(f"{name}: default {cell!r} is neither a value nor in DESCRIBED_DEFAULTS")
            continue
        values = ticked(cell) if opt.repeatable else [ticked(cell)[0] if cell.startswith("`") else first_word]
        # placeholders: CACHE_DIR and <option_name> stand for those options' resolved values
        values = [re.sub(r"<(\w+)>", lambda m: str(getattr(cfg, m.group(1))), v.replace("CACHE_DIR", cfg.cache_dir))
                  for v in values]
        if values == ["none"]:
            shown = None
        else:
            shown = opt.parse(values) if opt.repeatable else opt.parse(values[0])
        if shown != resolved:
            wrong.append(f"{name}: {CONFIGURATION.name} says {cell!r}, the default is {resolved!r}")
        minimum = re.search(r"minimum (\d+) ?([KMG]iB)", cell)
        if minimum:
            least = parse_size(minimum.group(1) + minimum.group(2))
            opt.parse(str(least))
            with pytest.raises(ValueError):
                opt.parse(str(least - 1))
    assert not wrong, "\n".join(wrong)


# -- counters -------------------------------------------------------------------------------------------
METRICS_DOC = DOCS / "METRICS.md"
COUNTERS_HEADING = "## The daemon's counters (`cachefs stats`)"
# Exported by name through metrics.STATS_COUNTERS; these by other means.
EXPORTED_OTHERWISE = {"cache_hits_<tier>": metrics.CACHE_HITS, "cache_hit_bytes_<tier>": metrics.CACHE_HIT_BYTES}


def _is_stats(expr: ast.expr) -> bool:
    return (isinstance(expr, ast.Name) and expr.id == "stats") or \
        (isinstance(expr, ast.Attribute) and expr.attr == "stats")


class _InFunction(ast.NodeVisitor):
    """Keeps `_func`: the functions the visit is inside, innermost last."""
    _func: list

    def visit_FunctionDef(self, node):
        self._func.append(node)
        self.generic_visit(node)
        self._func.pop()

    visit_AsyncFunctionDef = visit_FunctionDef


class _CounterFinder(_InFunction):
    """Counter names given to `<...>stats.add(...)` / `.get(...)`: string constants, both arms of a
    conditional, f-strings (kept as patterns, `{}` for each field), and a parameter of the enclosing
    function (followed to the calls of that function in the same module)."""

    def __init__(self, tree: ast.Module, where: str) -> None:
        self.tree, self.where = tree, where
        self.names: dict[str, str] = {}        # name or pattern -> first place seen
        self._func: list[ast.FunctionDef | ast.AsyncFunctionDef] = []

    def visit_Call(self, node: ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in ("add", "get") and _is_stats(f.value) and node.args:
            self._names_in(node.args[0], self._func[-1] if self._func else None, node.lineno)
        self.generic_visit(node)

    def _names_in(self, expr: ast.expr, func, line: int) -> None:
        place = f"{self.where}:{line}"
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            self.names.setdefault(expr.value, place)
        elif isinstance(expr, ast.JoinedStr):
            pattern = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in expr.values)
            self.names.setdefault(pattern, place)
        elif isinstance(expr, ast.IfExp):
            self._names_in(expr.body, func, line)
            self._names_in(expr.orelse, func, line)
        elif isinstance(expr, ast.Name) and func is not None and expr.id in [a.arg for a in func.args.args]:
            self._follow(func, expr.id)
        else:
            raise AssertionError(f"{place}: cannot tell which counter {ast.unparse(expr)} is")

    def _follow(self, func, param: str) -> None:
        params = [a.arg for a in func.args.args]
        index = params.index(param) - (1 if params[:1] == ["self"] else 0)
        finder = _CallsOf(func.name)
        finder.visit(self.tree)
        assert finder.calls, f"{self.where}: no call of {func.name} names its counter"
        for call, caller in finder.calls:
            arg = next((k.value for k in call.keywords if k.arg == param), None)
            if arg is None and index < len(call.args):
                arg = call.args[index]
            if arg is not None:
                self._names_in(arg, caller, call.lineno)


class _CallsOf(_InFunction):
    def __init__(self, name: str) -> None:
        self.name, self.calls, self._func = name, [], []

    def visit_Call(self, node: ast.Call):
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr == self.name) or (isinstance(f, ast.Name) and f.id == self.name):
            self.calls.append((node, self._func[-1] if self._func else None))
        self.generic_visit(node)


def source_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts and not p.name.startswith("csi_pb2"))


def counters_in_code() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in source_files():
        tree = ast.parse(path.read_text(), str(path))
        finder = _CounterFinder(tree, str(path.relative_to(ROOT)))
        finder.visit(tree)
        for name, place in finder.names.items():
            found.setdefault(name, place)
    return found


def _shape(pattern: str) -> str:
    return re.sub(r"<\w+>", "{}", pattern)


def test_every_counter_used_is_declared_and_every_declared_one_used():
    used = counters_in_code()
    assert "cache_misses" in used and "s3_put" in used         # the finder sees literals and followed params
    fixed = {n: p for n, p in used.items() if "{}" not in n}
    patterns = {n: p for n, p in used.items() if "{}" in n}
    undeclared = [f"{n} ({p})" for n, p in fixed.items() if n not in stats.COUNTERS]
    assert not undeclared, f"counters used but not in cachefs.stats.COUNTERS: {undeclared}"
    unused = set(stats.COUNTERS) - set(fixed)
    assert not unused, f"counters declared but never counted: {sorted(unused)}"
    assert set(patterns) == {_shape(p) for p in stats.PER_TIER}, "per-tier counters and PER_TIER disagree"
    assert stats.NAMES == tuple(stats.COUNTERS)
    assert all(stats.COUNTERS.values()) and all(stats.PER_TIER.values()), "a counter without a description"


def test_exported_counters_exist():
    for metric, (counter, _) in metrics.STATS_COUNTERS.items():
        assert counter in stats.COUNTERS, f"{metric} reads {counter}, which no code counts"


def test_metrics_md_lists_every_counter_and_where_it_is_exported():
    text = section(METRICS_DOC.read_text(), COUNTERS_HEADING)
    exported = {counter: metric for metric, (counter, _) in metrics.STATS_COUNTERS.items()} | EXPORTED_OTHERWISE
    rows: dict[str, list[str]] = {}
    for table in tables(text):
        assert table[0][:3] == ["counter", "meaning", "exported as"], table[0]
        for row in table[1:]:
            for name in ticked(row[0]):
                rows[name] = row
    declared = set(stats.COUNTERS) | set(stats.PER_TIER)
    missing, unknown = sorted(declared - set(rows)), sorted(set(rows) - declared)
    assert not missing, f"counters missing from {METRICS_DOC.name}: {missing}"
    assert not unknown, f"{METRICS_DOC.name} lists counters that do not exist: {unknown}"
    wrong = [f"{name}: {row[2]!r}, exported as {exported.get(name)!r}"
             for name, row in rows.items() if (ticked(row[2]) or [None])[0] != exported.get(name)]
    assert not wrong, "\n".join(wrong)


# -- the module list ------------------------------------------------------------------------------------
ARCHITECTURE = DOCS / "ARCHITECTURE.md"
LIST_START, LIST_END = "<!-- module-list -->", "<!-- /module-list -->"


def listed_modules() -> list[str]:
    """First-column paths (under cachefs/) of the table between the module-list markers."""
    text = ARCHITECTURE.read_text()
    body = text[text.index(LIST_START) + len(LIST_START):text.index(LIST_END)]
    (table,) = tables(body)
    return [name for row in table[1:] for name in ticked(row[0])]


def tree_modules() -> set[str]:
    """Every module (`store/s3.py`) and package (`store/`) under cachefs/, generated and dunder files left out."""
    out = {str(p.relative_to(PKG)) for p in source_files() if p.name not in ("__init__.py", "__main__.py")}
    out |= {str(p.parent.relative_to(PKG)) + "/" for p in PKG.rglob("__init__.py")
            if p.parent != PKG and "__pycache__" not in p.parts}
    return out


def test_architecture_module_list_is_the_package_tree():
    listed = listed_modules()
    assert len(listed) == len(set(listed)), "a module listed twice"
    tree = tree_modules()
    missing, unknown = sorted(tree - set(listed)), sorted(set(listed) - tree)
    assert not missing, f"modules missing from {ARCHITECTURE.name}'s module list: {missing}"
    assert not unknown, f"{ARCHITECTURE.name}'s module list names modules that do not exist: {unknown}"


# -- paths, modules and flags named anywhere in the docs -----------------------------------------------
# BENCHMARKS.md and RELIABILITY.md record commands and log lines as they ran on the tree of the time.
HISTORY = {"BENCHMARKS.md", "RELIABILITY.md"}
# Flags of other programs the docs quote (bench scripts, mount(8), systemctl, getfattr, kubectl, helm).
OTHER_PROGRAMS_FLAGS = {"--runs", "--minutes", "--seconds", "--fstab", "--now", "--only-values", "--field-selector",
                        "--from-literal", "--reuse-values", "--set",
                        # aws s3api and mc: the shared tier's lifecycle rule (CACHING.md "Shared tier")
                        "--bucket", "--lifecycle-configuration", "--expire-days", "--prefix"}


def current_docs() -> list[Path]:
    return [ROOT / "README.md"] + sorted(p for p in DOCS.glob("*.md") if p.name not in HISTORY)


def _module_exists(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_modules_and_files_named_in_the_docs_exist():
    missing = []
    basenames = {p.name for p in source_files()}
    for doc in current_docs():
        text = doc.read_text()
        for module in re.findall(r"python3? -m ([\w.]+)", text) + re.findall(r"`(cachefs(?:\.[a-z_]+)+)`", text):
            if not _module_exists(module):
                missing.append(f"{doc.name}: module {module}")
        for path in re.findall(r"`([\w./-]+\.py)`", text):
            # a path from the repository or from cachefs/, or a module's bare name (`staging.py` in
            # a section about writeback/)
            if not ((ROOT / path).is_file() or (PKG / path).is_file() or ("/" not in path and path in basenames)):
                missing.append(f"{doc.name}: file {path}")
    assert not missing, "\n".join(missing)


def _all_flags(parser: argparse.ArgumentParser, out: set[str]) -> set[str]:
    for action in parser._actions:
        out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _all_flags(sub, out)
    return out


def test_flags_named_in_the_docs_exist():
    known = _all_flags(make_parser(), set()) | OTHER_PROGRAMS_FLAGS
    unknown = [f"{doc.name}: {flag}" for doc in current_docs()
               for flag in sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", doc.read_text())) - known)]
    assert not unknown, "\n".join(unknown)


# -- lists of names the docs repeat ---------------------------------------------------------------------
def test_background_task_names_are_in_metrics_md():
    from cachefs import supervise
    text = section(METRICS_DOC.read_text(), "## Background work")
    missing = [t for t in supervise.TASKS if not re.search(rf"\b{t}\b", text)]
    assert not missing, f"supervise.TASKS missing from {METRICS_DOC.name} 'Background work': {missing}"


def test_reloadable_settings_are_options_and_documented():
    from cachefs.daemon.control import RELOADABLE
    assert set(RELOADABLE) <= set(OPTION_BY_NAME)
    row = next(r for t in tables((DOCS / "OPERATIONS.md").read_text()) for r in t if r[0].startswith("`reload"))
    documented = set(ticked(row[1])) & set(OPTION_BY_NAME)
    assert documented == set(RELOADABLE), f"OPERATIONS.md's reload list: {sorted(documented ^ set(RELOADABLE))}"
