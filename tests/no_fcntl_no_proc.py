"""Make this interpreter look like a platform without ``fcntl`` and without ``/proc`` (Windows,
macOS), for tests/test_platforms.py. Run before anything else: ``exec`` it, then the program.

- ``import fcntl`` fails (a meta-path finder placed first; a copy already imported is dropped).
- Opening, listing, stat-ing or reading a link of any path under ``/proc`` raises
  FileNotFoundError, as on a system that has none: ``open``/``io.open`` (which ``pathlib`` uses),
  ``os.open``, ``os.stat``, ``os.lstat``, ``os.scandir``, ``os.listdir``, ``os.readlink``.
  The one exception is psutil, whose Linux port reads ``/proc`` where its macOS and Windows
  ports ask the kernel directly.
- Every refused access is appended to the file named by $CHARRNN_SIM_LOG as
  "PATH<TAB>FILE", FILE being the first caller outside the standard library, so that a test sees
  accesses that the caller caught and silently survived.
"""

import builtins
import errno
import io
import os
import sys
import sysconfig

_STDLIB = sysconfig.get_paths()["stdlib"]
_INSTALLED = (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])
_LOG = os.environ.get("CHARRNN_SIM_LOG")
_real_open = builtins.open


class _NoFcntl:
    def find_spec(self, name, path=None, target=None):
        if name == "fcntl":
            raise ModuleNotFoundError("No module named 'fcntl' (simulated)", name="fcntl")
        return None


sys.modules.pop("fcntl", None)
sys.meta_path.insert(0, _NoFcntl())


def _under_proc(path) -> str | None:
    if isinstance(path, int):
        return None
    try:
        name = os.fsdecode(path)
    except TypeError:
        return None
    name = os.path.normpath(os.path.join(os.getcwd(), name))
    return name if name == "/proc" or name.startswith("/proc/") else None


def _caller():
    """(allowed, file): allowed if psutil is on the stack; file: the first non-stdlib caller."""
    frame, first = sys._getframe(2), None
    while frame is not None:
        filename = frame.f_code.co_filename
        if f"{os.sep}psutil{os.sep}" in filename:
            return True, filename
        stdlib = filename.startswith((_STDLIB, "<frozen")) and not filename.startswith(_INSTALLED)
        if first is None and not stdlib and filename != __file__:
            first = filename
        frame = frame.f_back
    return False, first


def _guard(function):
    def guarded(*args, **kwargs):
        name = _under_proc(args[0] if args else kwargs.get("path", kwargs.get("file", ".")))
        if name is not None:
            allowed, caller = _caller()
            if not allowed:
                if _LOG:
                    with _real_open(_LOG, "a", encoding="utf-8") as log:
                        log.write(f"{name}\t{caller}\n")
                raise FileNotFoundError(errno.ENOENT, "No such file or directory (simulated: no /proc)", name)
        return function(*args, **kwargs)

    guarded.__wrapped__ = function
    return guarded


builtins.open = io.open = _guard(_real_open)
for _name in ("open", "stat", "lstat", "scandir", "listdir", "readlink"):
    setattr(os, _name, _guard(getattr(os, _name)))
