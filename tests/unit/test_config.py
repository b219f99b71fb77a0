import pytest

from cachefs.config import Config, build_config
from cachefs.errors import ConfigError
from cachefs.units import MiB, parse_size


@pytest.mark.parametrize("text,expected", [
    ("4MiB", 4 << 20), ("4M", 4 << 20), ("4MB", 4_000_000), ("512KiB", 512 << 10), ("10GiB", 10 << 30),
    ("1.5GiB", 3 << 29), ("123", 123), (" 2 TiB ", 2 << 40), (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["4XB", "", "MiB", "-1", "1e3", "four"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_layers_in_order(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('block_size = "1MiB"\nentry_timeout = 5\nlisting_ttl = 7\n')
    env = {"CACHEFS_ENTRY_TIMEOUT": "9", "CACHEFS_LISTING_TTL": "8"}
    cfg = build_config("s3://bkt/some/prefix", "/mnt", {"listing_ttl": "1"}, str(toml), env)
    assert cfg.block_size == 1 << 20       # file over default
    assert cfg.entry_timeout == 9.0        # environment over file
    assert cfg.listing_ttl == 1.0          # flag over environment
    assert cfg.attr_timeout == Config().attr_timeout
    assert cfg.bucket == "bkt" and cfg.prefix == "some/prefix/"


def test_config_file_from_environment(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('read_ahead = "20MiB"\n')
    cfg = build_config("s3://bkt", "/mnt", {}, None, {"CACHEFS_CONFIG": str(toml)})
    assert cfg.read_ahead == 20 * MiB and cfg.read_ahead_blocks == 5     # whole 4 MiB blocks


@pytest.mark.parametrize("flags,message", [
    ({"block_size": "4XB"}, "--block-size"),
    ({"entry_timeout": "-1"}, "--entry-timeout"),
    ({"max_idle_threads": "0"}, "--max-idle-threads"),
    ({"addressing_style": "sideways"}, "--addressing-style"),
    ({"file_mode": "999"}, "--file-mode"),
    ({"cache_size": "16MiB", "block_size": "8MiB"}, "--cache-size"),
])
def test_bad_flags_name_the_option(flags, message):
    with pytest.raises(ConfigError, match=message):
        build_config("s3://bkt", "/mnt", flags, None, {})


def test_bad_environment_and_file(tmp_path):
    with pytest.raises(ConfigError, match="CACHEFS_BLOCK_SIZE"):
        build_config("s3://bkt", "/mnt", {}, None, {"CACHEFS_BLOCK_SIZE": "huge"})
    # Unknown CACHEFS_* variables are ignored (Kubernetes service links), and reported.
    cfg = build_config("s3://bkt", "/mnt", {}, None, {"CACHEFS_PORT": "tcp://10.0.0.1:80", "CACHEFS_NOPE": "1"})
    assert cfg.ignored_env == ("CACHEFS_NOPE", "CACHEFS_PORT")
    bad = tmp_path / "bad.toml"
    bad.write_text("block_size = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config("s3://bkt", "/mnt", {}, str(bad), {})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        build_config("s3://bkt", "/mnt", {}, str(unknown), {})
    with pytest.raises(ConfigError, match="does not exist"):
        build_config("s3://bkt", "/mnt", {}, str(tmp_path / "missing.toml"), {})


@pytest.mark.parametrize("source", ["bkt", "http://bkt", "s3://", "s3://b", "s3://bkt/a//b"])
def test_bad_source(source):
    with pytest.raises(ConfigError):
        build_config(source, "/mnt", {}, None, {})


def test_default_cache_dir_depends_on_identity():
    a = build_config("s3://bkt/a", "/mnt", {}, None, {})
    b = build_config("s3://bkt/b", "/mnt", {}, None, {})
    assert a.cache_dir != b.cache_dir
    assert a.log_file.startswith(a.cache_dir)


def test_tiers_from_file_environment_and_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('cache = ["mem:64MiB", "ssd:/nvme0/c,/nvme1/c:400GiB:high=0.9:low=0.8"]\n'
                    'eviction_policy = "lru"\npromotion = "after:2"\n')
    cfg = build_config("s3://bkt", "/mnt", {}, str(toml), {})
    assert [t.kind for t in cfg.cache] == ["mem", "ssd"]
    assert cfg.cache[1].dirs == ("/nvme0/c", "/nvme1/c") and cfg.cache[1].high == 0.9
    assert cfg.eviction_policy == "lru" and cfg.promotion == 2
    env = {"CACHEFS_CACHE": "hdd:/data/c:4TiB"}
    assert [t.kind for t in build_config("s3://bkt", "/mnt", {}, str(toml), env).cache] == ["hdd"]
    flags = {"cache": ["mem:1GiB", "ssd:/x:10GiB"]}
    assert [t.quota for t in build_config("s3://bkt", "/mnt", flags, str(toml), env).cache] == [1 << 30, 10 << 30]


def test_default_tiers_and_conflicts():
    cfg = build_config("s3://bkt", "/mnt", {"cache_size": "1GiB"}, None, {})
    assert [(t.kind, t.quota) for t in cfg.cache] == [("mem", 256 << 20), ("ssd", 1 << 30)]
    assert cfg.cache[1].dirs == (cfg.cache_dir,)
    with pytest.raises(ConfigError, match="--cache-size"):
        build_config("s3://bkt", "/mnt", {"cache_size": "1GiB", "cache": ["ssd:/x:2GiB"]}, None, {})
    with pytest.raises(ConfigError, match="--cache"):
        build_config("s3://bkt", "/mnt", {"cache": ["ssd:/x:1MiB"]}, None, {})
    with pytest.raises(ConfigError, match="--cache"):
        build_config("s3://bkt", "/mnt", {"cache": ["floppy:/x:1GiB"]}, None, {})
