"""pytest plugin: one TAP line per test case on stdout, everything else on stderr.

Use: python3 -m pytest -p tap_plugin ...  (this directory on PYTHONPATH).

At import (which `-p` does before pytest sets up capturing or its terminal
reporter) the real stdout is duplicated to a private descriptor used only for
TAP, and fd 1 is pointed at stderr, so pytest's own output, prints and child
processes all land on stderr and stdout stays valid TAP for automake's
tap-driver.sh.

A test's line is written once its teardown has been reported:
  ok N - nodeid                         passed
  not ok N - nodeid                     failed in setup, call or teardown
  ok N - nodeid # SKIP reason           skipped
  not ok N - nodeid # TODO reason       expected failure (xfail)
followed, on failure, by the report as `# ` comment lines.  Collection errors
get a `not ok` line of their own.  The plan `1..N` comes last.
"""

import os
import sys

sys.stdout.flush()
_tap = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
os.dup2(2, 1)

_n = 0
_state = {}
MAX_DETAIL_LINES = 60


def _clean(text):
    # '#' would start a directive; keep the description on one line
    return " ".join(str(text).split()).replace("#", "\\#")


def _emit(ok, name, directive=None, detail=None):
    global _n
    _n += 1
    line = "%s %d - %s" % ("ok" if ok else "not ok", _n, _clean(name))
    if directive:
        line += " # " + directive
    _tap.write(line + "\n")
    if detail:
        lines = str(detail).rstrip("\n").splitlines()
        if len(lines) > MAX_DETAIL_LINES:
            lines = ["[... %d lines cut]" % (len(lines) - MAX_DETAIL_LINES)] + lines[-MAX_DETAIL_LINES:]
        for ln in lines:
            _tap.write("# " + ln + "\n")
    _tap.flush()


def _skip_reason(report):
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        reason = lr[2]
    else:
        reason = str(lr or "")
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    return _clean(reason) or "skipped"


def pytest_runtest_logreport(report):
    st = _state.setdefault(report.nodeid, {"failed": [], "skipped": None, "xfail": None})
    if report.failed:
        st["failed"].append("%s failed:\n%s" % (report.when, report.longreprtext))
    elif report.skipped:
        if getattr(report, "wasxfail", None) is not None:
            st["xfail"] = _clean(report.wasxfail) or "expected failure"
        else:
            st["skipped"] = _skip_reason(report)
    elif report.passed and getattr(report, "wasxfail", None) is not None and report.when == "call":
        st["xpass"] = _clean(report.wasxfail) or "unexpected pass"
    if report.when != "teardown":
        return
    _state.pop(report.nodeid, None)
    name = report.nodeid
    if st["failed"]:
        _emit(False, name, None, "\n".join(st["failed"]))
    elif st["xfail"] is not None:
        _emit(False, name, "TODO " + st["xfail"])
    elif st.get("xpass") is not None:
        _emit(True, name, "TODO " + st["xpass"])
    elif st["skipped"] is not None:
        _emit(True, name, "SKIP " + st["skipped"])
    else:
        _emit(True, name)


def pytest_collectreport(report):
    if report.failed:
        _emit(False, "collect " + (report.nodeid or "session"), None, report.longreprtext)


def pytest_sessionfinish(session, exitstatus):
    # tests whose teardown was never reported (interrupted run)
    for nodeid, st in list(_state.items()):
        _emit(False, nodeid, None, "\n".join(st["failed"]) or "interrupted")
    _state.clear()
    if _n == 0:
        _tap.write("1..0 # SKIP no tests ran\n")
    else:
        _tap.write("1..%d\n" % _n)
    _tap.flush()
