"""S3 clients and the credentials they sign with: an AWS profile, the environment, or an AWS-style
credentials file that only its owner may read."""
from __future__ import annotations

import configparser
import os
import stat
from typing import Any

import boto3
import botocore.config
import botocore.exceptions as bce

from cachefs.errors import ConfigError, UserError


def load_credentials_file(path: str, profile: str | None) -> dict[str, str]:
    """Keys from an AWS-style INI credentials file, refusing one that others can read."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"credentials file {path}: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"credentials file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                          "it must not be readable by group or others (chmod 600)")
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as e:
        raise ConfigError(f"credentials file {path} is not a valid INI file: {e.message}") from None
    section = profile or "default"
    if not parser.has_section(section):
        raise ConfigError(f"credentials file {path} has no [{section}] section")
    sec = parser[section]
    if "aws_access_key_id" not in sec or "aws_secret_access_key" not in sec:
        raise ConfigError(f"credentials file {path} [{section}] lacks aws_access_key_id/aws_secret_access_key")
    creds = {"aws_access_key_id": sec["aws_access_key_id"], "aws_secret_access_key": sec["aws_secret_access_key"]}
    if "aws_session_token" in sec:
        creds["aws_session_token"] = sec["aws_session_token"]
    return creds



def s3_clients(*, endpoint_url: str | None, region: str | None, addressing_style: str, profile: str | None,
               credentials_file: str | None, max_attempts: int, connect_timeout: float, read_timeout: float,
               max_connections: int) -> tuple[Any, Any]:
    """(client, read_client): the same endpoint and credentials; the read client makes one attempt
    per call (S3Store._read retries reads itself, bounded by attempts and one deadline, with a
    breaker for outages), the other keeps botocore's standard retries (writes)."""
    creds = load_credentials_file(credentials_file, profile) if credentials_file else {}
    try:
        session = boto3.Session(profile_name=None if credentials_file else profile, **creds)
    except bce.ProfileNotFound:
        raise ConfigError(f"AWS profile {profile!r} not found") from None
    if session.get_credentials() is None:
        raise UserError("no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                        "--profile or --credentials-file)")
    config = botocore.config.Config(
        region_name=region or session.region_name or "us-east-1",
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        max_pool_connections=max_connections,
        s3={"addressing_style": addressing_style},
    )
    try:
        client = session.client("s3", endpoint_url=endpoint_url, config=config)
        read_client = session.client("s3", endpoint_url=endpoint_url, config=config.merge(
            botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"})))
    except ValueError as e:  # botocore rejects a malformed endpoint URL this way
        raise ConfigError(f"--endpoint-url: {e}") from None
    return client, read_client
