"""Exceptions whose class name the worker matches to tell the client's fault from ours.

The Rust worker compares the raised exception's class name (daemon/src/worker/pyerr.rs):
``BadRequest`` travels to the client as a BadRequest error, ``Unsupported`` as Unsupported;
anything else is an internal error. Both are ValueErrors for Python callers.
"""

from __future__ import annotations


class BadRequest(ValueError):
    """A request that is wrong whatever the model; reported to the client as BadRequest."""


class Unsupported(BadRequest):
    """A request this model cannot serve as asked (no chat template, ...); reported to the
    client as Unsupported, so programs can fall back without reading the message."""
