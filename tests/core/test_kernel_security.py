"""The C kernels' run-time cache (exact_native): only a folder of the current user that no
one else can write is used, libraries in it are private whatever the umask, a broken
one is rebuilt (with OpenMP), and processes started together build once."""
import json
import os
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from mresnet_core import MomentumNet, exact, exact_native

OTHER_UID = 12345  # another local user
PROBE = """
import json, os, sys, time
from pathlib import Path
from mresnet_core import exact_native as e
e.INSTALLED_LIBRARY = Path("/nonexistent/libexact_kernels.so")  # the cache only
if os.environ.get("PROBE_UMASK"):
    os.umask(int(os.environ["PROBE_UMASK"], 8))
barrier = os.environ.get("PROBE_BARRIER")
if barrier:  # start building together with the other probes
    Path(barrier, str(os.getpid())).touch()
    while len(os.listdir(barrier)) < int(os.environ["PROBE_COUNT"]):
        time.sleep(0.01)
lib = e.library()
info = e.library_info()
print(json.dumps({"error": e.build_error(), "info": info and vars(info)}))
"""


def needs_compiler():
    if exact_native.find_compiler() is None:
        pytest.skip("no C compiler: nothing is built in the cache")


def start_probe(cache: Path, **env):
    env = {**os.environ, "MRESNET_KERNEL_CACHE": str(cache), **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def probe_result(proc) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def probe(cache: Path, **env) -> dict:
    """library() in a fresh process, with ``cache`` and no installed library."""
    return probe_result(start_probe(cache, **env))


@pytest.fixture
def cache_only(monkeypatch, tmp_path):
    """library() afresh, as if the package were not installed; afresh again afterwards."""
    exact_native.library.cache_clear()
    exact.warn_native_unavailable.cache_clear()
    monkeypatch.setattr(exact_native, "INSTALLED_LIBRARY", tmp_path / "not-installed" / "libexact_kernels.so")
    yield monkeypatch
    monkeypatch.undo()
    exact_native.library.cache_clear()
    exact.warn_native_unavailable.cache_clear()


def refused(cache: Path, monkeypatch, *expected: str) -> None:
    """The cache is not used: library() is None for the given reason and nothing was
    built or written in the folder."""
    before = sorted(os.listdir(cache)) if os.path.isdir(cache) else None
    monkeypatch.setenv("MRESNET_KERNEL_CACHE", str(cache))
    monkeypatch.setattr(exact_native, "find_compiler", lambda: "/bin/false")  # would fail loudly
    assert exact_native.library() is None
    why = exact_native.build_error()
    assert "the kernel cache is not used" in why and all(e in why for e in expected), why
    assert (sorted(os.listdir(cache)) if os.path.isdir(cache) else None) == before


def stack_still_works() -> None:
    """A float32 exact stack runs on the torch kernels, with one warning saying why."""
    torch.manual_seed(0)
    net = MomentumNet([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)], 0.9,
                      memory_efficient=True)
    plain = MomentumNet(list(net.functions), 0.9, memory_efficient=False)
    x = torch.randn(5, 8, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net(x).sum().backward()
    ours = [str(w.message) for w in caught if "C exact kernels" in str(w.message)]
    assert len(ours) == 1 and exact_native.build_error() in ours[0], ours
    x2 = x.detach().clone().requires_grad_(True)
    plain(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)


def test_the_default_cache_is_per_user_not_in_the_shared_temp_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MRESNET_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert exact_native.cache_dir() == tmp_path / "xdg" / "mresnet_core"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert exact_native.cache_dir() == tmp_path / "home" / ".cache" / "mresnet_core"
    assert not str(exact_native.cache_dir()).startswith(tempfile.gettempdir() + "/mresnet_core")


def test_a_cache_folder_of_another_user_is_refused(cache_only, tmp_path):
    if os.getuid() != 0:
        pytest.skip("making a folder another user's needs root")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, OTHER_UID, OTHER_UID)
    refused(cache, cache_only, f"owned by uid {OTHER_UID}")
    stack_still_works()


def test_a_world_writable_cache_folder_is_refused(cache_only, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    refused(cache, cache_only, "writable by others", "777")
    stack_still_works()


def test_a_symlinked_cache_folder_is_refused(cache_only, tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink(tmp_path / "real", tmp_path / "cache")
    refused(tmp_path / "cache", cache_only, "symlink")


def test_a_cache_below_a_folder_others_can_write_is_refused(cache_only, tmp_path):
    """Whoever can write a folder above the cache can swap the cache for their own."""
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)  # not sticky, unlike /tmp
    (tmp_path / "open" / "cache").mkdir(mode=0o700)
    refused(tmp_path / "open" / "cache", cache_only, "above the kernel cache", str(tmp_path / "open"))


def test_with_the_installed_library_a_bad_cache_is_never_touched(monkeypatch, tmp_path):
    if not exact_native.INSTALLED_LIBRARY.exists():
        pytest.skip("the package was not installed")
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    monkeypatch.setenv("MRESNET_KERNEL_CACHE", str(cache))
    exact_native.library.cache_clear()
    try:
        assert exact_native.library() is not None
        assert exact_native.library_info().origin == "installed" and not os.listdir(cache)
    finally:
        exact_native.library.cache_clear()


def test_an_installed_library_that_fails_to_load_or_is_stale_is_replaced_by_a_cache_build(cache_only, tmp_path):
    """A broken installed library, or one built before exact_kernels.c was edited (an
    editable checkout): the kernels are built in the cache instead, with OpenMP."""
    needs_compiler()
    broken = tmp_path / "site" / "libexact_kernels.so"
    broken.parent.mkdir()
    broken.write_bytes(b"garbage" * 100)
    cache_only.setattr(exact_native, "INSTALLED_LIBRARY", broken)
    cache_only.setenv("MRESNET_KERNEL_CACHE", str(tmp_path / "cache"))
    assert exact_native.library() is not None, exact_native.build_error()
    info = exact_native.library_info()
    assert info.origin == "cache" and info.built and info.openmp and exact_native.build_error() is None
    if exact_native.INSTALLED_LIBRARY.exists():  # the real one, with an edited source
        cache_only.undo()
        exact_native.library.cache_clear()
        edited = tmp_path / "exact_kernels.c"
        edited.write_bytes(exact_native.SOURCE.read_bytes() + b"/* edited */\n")
        cache_only.setattr(exact_native, "SOURCE", edited)
        cache_only.setenv("MRESNET_KERNEL_CACHE", str(tmp_path / "cache"))
        assert exact_native.library() is not None, exact_native.build_error()
        assert exact_native.library_info().origin == "cache" and exact_native.library_info().built


def test_cached_files_of_another_user_or_symlinks_are_not_loaded(cache_only, tmp_path):
    needs_compiler()
    cache = tmp_path / "cache"
    cache_only.setenv("MRESNET_KERNEL_CACHE", str(cache))
    assert exact_native.library() is not None, exact_native.build_error()
    built = Path(exact_native.library_info().path)
    for tamper, reason in (("symlink", "symlink"), ("chmod", "writable by others"),
                           ("chown", f"owned by uid {OTHER_UID}")):
        if tamper == "chown" and os.getuid() != 0:
            continue
        exact_native.library.cache_clear()
        if tamper == "symlink":
            os.rename(built, tmp_path / "elsewhere.so")
            os.symlink(tmp_path / "elsewhere.so", built)
        elif tamper == "chmod":
            os.chmod(built, 0o766)
        else:
            os.chown(built, OTHER_UID, OTHER_UID)
        assert exact_native.library() is None
        assert reason in exact_native.build_error() and str(built) in exact_native.build_error()
        os.unlink(built)
        os.rename(tmp_path / "elsewhere.so", built) if tamper == "symlink" else None
        if not built.exists():
            exact_native.library.cache_clear()
            assert exact_native.library() is not None  # rebuilt
            assert exact_native.library_info().built


def test_a_build_under_umask_000_is_private(tmp_path):
    """The cache folder (and the folders made above it) 0700, the library and the lock
    not writable by anyone else, whatever the umask."""
    needs_compiler()
    cache = tmp_path / "made" / "cache"
    result = probe(cache, PROBE_UMASK="000")
    assert result["error"] is None and result["info"]["built"], result
    for folder in (tmp_path / "made", cache):
        assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700, folder
    for name in os.listdir(cache):
        mode = stat.S_IMODE(os.lstat(cache / name).st_mode)
        assert not mode & 0o077, (name, oct(mode))
    assert Path(result["info"]["path"]).parent == cache


def test_a_corrupted_cached_library_is_rebuilt_with_openmp(tmp_path):
    needs_compiler()
    cache = tmp_path / "cache"
    first = probe(cache)
    assert first["info"]["built"] and first["info"]["openmp"], first
    path = Path(first["info"]["path"])
    path.write_bytes(b"not a shared library " * 100)
    second = probe(cache)
    assert second["error"] is None, second
    assert second["info"]["path"] == str(path) and second["info"]["built"], second
    assert second["info"]["openmp"], "rebuilt without OpenMP"
    assert path.read_bytes()[:4] == b"\x7fELF"
    assert probe(cache)["info"]["built"] is False  # and then used as it is


def test_a_cached_library_of_another_build_is_rebuilt(tmp_path):
    """One that loads but reports another version is unloaded, rebuilt and loaded anew."""
    needs_compiler()
    cache = tmp_path / "cache"
    path = Path(probe(cache)["info"]["path"])
    stale = tmp_path / "stale.c"
    stale.write_text("int exact_kernels_version(void) { return 3; }\n")
    subprocess.run([exact_native.find_compiler(), "-shared", "-fPIC", str(stale), "-o", str(path)], check=True)
    os.chmod(path, 0o700)
    result = probe(cache)
    assert result["error"] is None and result["info"]["built"] and result["info"]["openmp"], result


def test_processes_started_together_build_once(tmp_path):
    """The build holds a lock on the cache: the other processes wait and load it."""
    needs_compiler()
    cache, barrier, count = tmp_path / "cache", tmp_path / "barrier", 2
    barrier.mkdir()
    procs = [start_probe(cache, PROBE_BARRIER=barrier, PROBE_COUNT=count) for _ in range(count)]
    results = [probe_result(p) for p in procs]
    assert all(r["error"] is None for r in results), results
    assert sorted(r["info"]["built"] for r in results) == [False] * (count - 1) + [True], results
    assert len({r["info"]["path"] for r in results}) == 1
    assert [n for n in os.listdir(cache) if n.endswith(".so")] == [Path(results[0]["info"]["path"]).name]
