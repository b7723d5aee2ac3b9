"""Attributes that are views of state kept elsewhere.

smtpd's classes had plain attributes; here several are computed from state
the package keeps privately, in three kinds:

* :class:`View`: a read-only value that a subclass or an instance may
  replace (a non-data descriptor), for the names this package adds to
  smtpd's classes (``SMTPServer.port``, the options, ``tls_active``...);
* :func:`session_view`: smtpd's transaction attributes of ``SMTPChannel``
  (``mailfrom``, ``rcpttos``, ``smtp_state``...), read and written through
  to the channel's session;
* :func:`deprecated_alias`: smtpd's old ``_SMTPChannel__*`` names, which warn.

"""

from __future__ import annotations

from typing import Any, Callable, Generic, Optional, TypeVar, overload
from warnings import warn

from . import _options

__all__ = ["View", "deprecated_alias", "option_view", "session_view"]

T = TypeVar("T")


class View(Generic[T]):
    """A read-only attribute computed from private state, which a subclass
    or an instance may replace with an attribute of its own.

    A non-data descriptor: instance assignment and subclass attributes win
    over it, as they would over a name the class did not have at all.
    """

    def __init__(self, getter: Callable[[Any], T], doc: Optional[str] = None) -> None:
        self._getter = getter
        self.__doc__ = doc or getter.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.__name__ = name

    @overload
    def __get__(self, obj: None, owner: Optional[type] = None) -> "View[T]": ...

    @overload
    def __get__(self, obj: object, owner: Optional[type] = None) -> T: ...

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        return self._getter(obj)


def option_view(name: str) -> View[Any]:
    """``server.<name>``: the value of option *name*."""
    return View(lambda server: getattr(_options.of(server), name), "The %s option (read-only view)." % name)


def session_view(name: str, session_of: Callable[[Any], Any]) -> property:
    """smtpd's attribute *name* on SMTPChannel: the one of that name of the
    channel's session (``session_of(channel)``)."""

    def get(self: Any) -> Any:
        return getattr(session_of(self), name)

    def put(self: Any, value: Any) -> None:
        setattr(session_of(self), name, value)

    return property(get, put, doc="smtpd's %s (kept by the session)" % name)


def deprecated_alias(old: str, new: str) -> property:
    def getter(self: Any) -> Any:
        warn(
            "Access to __%s attribute on SMTPChannel is deprecated, use '%s' instead" % (old, new),
            DeprecationWarning,
            2,
        )
        return getattr(self, new)

    def setter(self: Any, value: Any) -> None:
        warn(
            "Setting __%s attribute on SMTPChannel is deprecated, set '%s' instead" % (old, new),
            DeprecationWarning,
            2,
        )
        setattr(self, new, value)

    return property(getter, setter)
