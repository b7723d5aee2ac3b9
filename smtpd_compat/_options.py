"""The keyword options of one server, kept where no subclass can clash with them.

``SMTPServer(..., **options)`` stores the options it is given in one private
:class:`Options` object (``server._compat_options``); the code that uses them
reads them there through :func:`of`.  The standard library's ``SMTPServer``
had none of these names, so a subclass written for it may use any of them
(``self.max_connections = ...``, a method called ``authenticator``...) for
its own purposes: that must neither change how the server behaves nor fail.

Each option is also readable as an attribute of the same name on the server
(``_views.option_view``, a non-data descriptor): reading ``server.max_errors``
gives the option's value, while a subclass attribute or an instance
assignment of that name simply takes its place, as it would have on the
standard library's class.  Options are given when the server is created;
assigning the attribute later rebinds the name on that object only.

The defaults live in the tables of the feature modules (``_limits``,
``_tls``, ``_serving``), which register them here when imported.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

__all__ = ["Options", "defaults", "names", "of", "register"]

_TABLES: Dict[str, Dict[str, Any]] = {}
_defaults: Optional["Options"] = None

# The attribute of the server that holds its Options.
ATTRIBUTE = "_compat_options"


def register(owner: str, table: Dict[str, Any]) -> None:
    """Add the options of the feature module *owner* with their defaults."""
    global _defaults
    for name in table:
        for other, known in _TABLES.items():
            if name in known and other != owner:
                raise ValueError("option %r is declared by both %s and %s" % (name, other, owner))
    _TABLES[owner] = table
    _defaults = None


def names() -> Iterator[str]:
    """Every option name, in declaration order."""
    for table in _TABLES.values():
        yield from table


class Options:
    """One server's option values, by name (attributes)."""

    def __init__(self, given: Optional[Dict[str, Any]] = None) -> None:
        for table in _TABLES.values():
            self.__dict__.update(table)
        if given:
            unknown = sorted(name for name in given if name not in self.__dict__)
            if unknown:
                raise TypeError("unexpected keyword argument(s): %s" % ", ".join(unknown))
            self.__dict__.update(given)

    def __repr__(self) -> str:
        return "Options(%s)" % ", ".join("%s=%r" % item for item in sorted(self.__dict__.items()))


def defaults() -> Options:
    """The options of a server that was given none."""
    global _defaults
    if _defaults is None:
        _defaults = Options()
    return _defaults


def of(server: Any) -> Options:
    """The options of *server*; the defaults for an object that has none (a
    stand-in server in a test, or a server whose ``__init__`` has not run)."""
    try:
        return server.__dict__[ATTRIBUTE]  # type: ignore[no-any-return]
    except (KeyError, AttributeError):
        return defaults()
