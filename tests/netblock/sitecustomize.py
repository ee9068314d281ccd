"""Loaded at start-up by every Python process whose PYTHONPATH holds this folder (the test suite's
end-to-end run and each of its jobs): any connection or name lookup beyond this machine fails, and is
written to $CONCEPTSCOPE_NETLOG so the test can show what tried. Each process also notes that it loaded
this file ($CONCEPTSCOPE_NETLOG.loaded), proving the guard was in place."""

import os
import socket
import sys

_LOG = os.environ.get("CONCEPTSCOPE_NETLOG")
_LOCAL = {"127.0.0.1", "::1", "localhost", "", None}


def _record(what: str) -> None:
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {' '.join(sys.argv)[:200]}: {what}\n")


def _guard(name, check):
    original = getattr(socket.socket, name)

    def guarded(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6) and check(address):
            _record(f"socket.{name}({address!r})")
            raise OSError(f"network access blocked by the test suite: {address!r}")
        return original(self, address, *args, **kwargs)

    setattr(socket.socket, name, guarded)


def _remote(address) -> bool:
    return (address[0] if isinstance(address, tuple) else address) not in _LOCAL


for _name in ("connect", "connect_ex", "sendto"):
    _guard(_name, _remote)

_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL:
        _record(f"getaddrinfo({host!r})")
        raise socket.gaierror(f"name lookup blocked by the test suite: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _guarded_getaddrinfo

if _LOG:
    with open(_LOG + ".loaded", "a") as _f:
        _f.write(f"{os.getpid()} {' '.join(sys.argv)[:200]}\n")
