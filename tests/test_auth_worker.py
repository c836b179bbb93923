"""A worker's side of authentication through the Twisted layer, on in-memory pipes
(replication.testing.Harness): a worker with the right secret follows its stream; one with
a wrong secret, or none, handles nothing; and a worker with a credential takes nothing from a
master that does not authenticate (a rogue one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replication.testing import Harness
from replication.wire.auth import ClientCredential, Credential, Keyring, Permissions
from replication.worker import Worker

KEYRING = Keyring([Credential("w1", b"right", Permissions(read=frozenset({"events"})))])


class Recording:
    def __init__(self) -> None:
        self.tokens: list[int] = []

    def __call__(self, stream: str, token: int, rows: list[Any]) -> None:
        self.tokens.append(token)


def worker(h: Harness, handler: Recording, credential: ClientCredential | None) -> Worker:
    template = h.worker(handler)
    return Worker(template.config, handler, template.positions, h.clock,
                  credential=credential)


def harness(tmp_path: Path, keyring: Keyring | None = KEYRING) -> Harness:
    tmp_path.mkdir(exist_ok=True)
    h = Harness(tmp_path)
    h.master.keyring = keyring
    h.publish("events", [{"n": 1}])
    h.publish("events", [{"n": 2}])
    return h


def test_a_worker_with_the_right_secret_follows_its_stream(tmp_path: Path) -> None:
    h = harness(tmp_path)
    handler = Recording()
    pipe = h.connect(worker(h, handler, ClientCredential("w1", b"right")))
    h.run(pipe)
    assert handler.tokens == [1, 2]
    assert pipe.server.credential == "w1" and pipe.client.credential == "w1"


def test_a_worker_with_a_wrong_secret_or_none_handles_nothing(tmp_path: Path) -> None:
    for i, credential in enumerate((ClientCredential("w1", b"wrong"), None)):
        h = harness(tmp_path / str(i))
        handler = Recording()
        pipe = h.connect(worker(h, handler, credential))
        h.run(pipe)
        assert handler.tokens == []
        if credential is None:  # the worker refuses the CHALLENGE itself
            assert pipe.client.close_reason == "authentication required"
        else:
            assert pipe.server.close_reason == "authentication failed"


def test_a_worker_with_a_credential_takes_nothing_from_a_master_that_does_not_ask(
    tmp_path: Path,
) -> None:
    h = harness(tmp_path, keyring=None)
    handler = Recording()
    pipe = h.connect(worker(h, handler, ClientCredential("w1", b"right")))
    h.run(pipe)
    assert handler.tokens == []
    assert pipe.client.close_reason == "authentication required"
