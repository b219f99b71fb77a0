

def test_chown_by_the_owner_follows_posix(mounter, make_bucket, tmp_path):
    """Not root: the owner may give the file to a group it is in, never to another user or to a
    group it is not in (the kernel's check, default_permissions)."""
    from test_posix_perms import NOBODY, as_nobody
    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o755)
    tmp_path.chmod(0o755)
    m = mounter.mount(make_bucket("chown-owner", {}), "--allow-other", "--attr-timeout", "0",
                      "--entry-timeout", "0", mountpoint=public)
    os.chmod(m.path, 0o777)
    f = m.path / "f"
    f.write_bytes(b"x")
    os.chown(f, NOBODY, 0)
    assert as_nobody(os.chown, f, -1, NOBODY) is None                  # a group of its own
    assert os.stat(f).st_gid == NOBODY
    assert as_nobody(os.chown, f, -1, 0) == errno.EPERM                 # not its group
    assert as_nobody(os.chown, f, 0, -1) == errno.EPERM                 # not its to give away
    assert as_nobody(os.chmod, f, 0o600) is None
    assert (os.stat(f).st_uid, os.stat(f).st_gid, stat.S_IMODE(os.stat(f).st_mode)) == (NOBODY, NOBODY, 0o600)
    assert as_nobody(os.symlink, "f", m.path / "by-nobody") is None
    assert os.lstat(m.path / "by-nobody").st_uid == NOBODY              # links belong to their creator
