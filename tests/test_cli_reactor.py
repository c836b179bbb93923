"""``--reactor`` of ``replication master`` and ``worker``: asyncio by default for a worker
(and for a master that loads application commands), Twisted's platform reactor otherwise or
on request, and what happens when a reactor is installed already. Each
installation runs in a fresh interpreter (the test process may have a reactor of its own)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from replication.cli import MASTER_REACTORS, REACTORS, build_parser, master_reactor


def test_the_worker_reactor_flag_defaults_to_asyncio() -> None:
    """Without the flag a worker's reactor is ``asyncio``; ``default`` is the other choice,
    and anything else is refused by the parser."""
    parser = build_parser()
    assert REACTORS == ("asyncio", "default")
    assert parser.parse_args(["worker"]).reactor == "asyncio"
    assert parser.parse_args(["worker", "--reactor", "default"]).reactor == "default"
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--reactor", "epoll"])
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--reactor", "auto"])


def test_the_master_reactor_is_asyncio_only_for_application_commands() -> None:
    """A master's ``--reactor`` defaults to ``auto``: asyncio when the configuration loads
    application commands (their coroutine handlers may await asyncio), Twisted's platform
    reactor otherwise; an explicit choice is kept."""
    parser = build_parser()
    assert MASTER_REACTORS == ("auto", "asyncio", "default")
    assert parser.parse_args(["master"]).reactor == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["master", "--reactor", "epoll"])
    assert master_reactor("auto", None) == "default"
    assert master_reactor("auto", "myapp.commands:register") == "asyncio"
    assert master_reactor("asyncio", None) == "asyncio"
    assert master_reactor("default", "myapp.commands:register") == "default"


def _installed(prelude: str, name: str) -> subprocess.CompletedProcess[str]:
    """Run ``prelude`` then ``install_reactor(name)`` in a fresh interpreter; print the
    global reactor's class name, or the CommandLineError."""
    script = textwrap.dedent(f"""
        {prelude}
        from replication.cli import CommandLineError, install_reactor
        try:
            install_reactor({name!r})
        except CommandLineError as e:
            print("error:", e)
        else:
            from twisted.internet import reactor
            print(type(reactor).__name__)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)


@pytest.mark.parametrize(("prelude", "name", "printed"), [
    ("", "asyncio", "AsyncioSelectorReactor"),
    ("", "default", "EPollReactor"),
    ("from twisted.internet import asyncioreactor; asyncioreactor.install()", "asyncio",
     "AsyncioSelectorReactor"),
    ("from twisted.internet import selectreactor; selectreactor.install()", "default",
     "SelectReactor"),
    ("from twisted.internet import selectreactor; selectreactor.install()", "asyncio",
     "error: --reactor asyncio: another reactor is installed already (SelectReactor)"),
])
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the default is epoll on Linux")
def test_install_reactor(prelude: str, name: str, printed: str) -> None:
    """``asyncio`` installs Twisted's asyncio reactor, or keeps one installed already;
    ``default`` leaves whatever is or will be installed (epoll on Linux); ``asyncio`` when
    another reactor is installed is a CommandLineError naming it."""
    assert _installed(prelude, name).stdout.strip() == printed


def test_tune_garbage_collector() -> None:
    """In a fresh interpreter: the objects alive at the call are frozen (no longer walked
    by collections), and the youngest generation's threshold becomes GC_YOUNG_THRESHOLD,
    the older ones unchanged."""
    code = textwrap.dedent("""
        import gc
        from replication.cli import GC_YOUNG_THRESHOLD, tune_garbage_collector
        before = gc.get_threshold()
        tune_garbage_collector()
        after = gc.get_threshold()
        assert after == (GC_YOUNG_THRESHOLD, before[1], before[2]), (before, after)
        assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "ok"
