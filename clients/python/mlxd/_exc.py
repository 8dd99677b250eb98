"""The root exception types, kept apart so that the codec can raise them without
importing the protocol (see :mod:`mlxd.errors` for the whole family)."""


class MlxdError(Exception):
    """Anything that went wrong talking to mlxd."""


class ProtocolError(MlxdError):
    """The bytes on the connection are not the protocol: a bad frame, a frame over the
    limit, an answer that does not fit the request. The connection is closed."""
