"""Compatibility: handlers moved to :mod:`replication.worker.handlers`; this module re-exports
its public names, so ``handler: replication.handlers:print_json`` keeps working."""

from replication.worker.handlers import (
    Handler,
    HandlerLoadError,
    PrintJson,
    load_handler,
    print_json,
)

__all__ = ["Handler", "HandlerLoadError", "PrintJson", "load_handler", "print_json"]
