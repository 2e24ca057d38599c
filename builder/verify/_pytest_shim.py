"""A small stand-in for the parts of pytest that generated tests use."""

import math as _math


class Skipped(BaseException):
    pass


class Failed(AssertionError):
    pass


class FixtureMissing(Exception):
    pass


_FIXTURES = {}


def skip(reason=""):
    raise Skipped(reason)


def fail(reason=""):
    raise Failed(reason)


def fixture(func=None, **_kw):
    def register(f):
        _FIXTURES[_kw.get("name") or f.__name__] = f
        return f

    return register(func) if callable(func) else register


class _RaisesContext:
    def __init__(self, expected, match):
        self.expected = expected
        self.match = match
        self.value = None
        self.type = None

    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        if typ is None:
            raise Failed(f"DID NOT RAISE {self.expected!r}")
        if not issubclass(typ, self.expected):
            return False
        if self.match is not None and not __import__("re").search(self.match, str(value)):
            raise Failed(f"regex {self.match!r} does not match {str(value)!r}")
        self.value = value
        self.type = typ
        return True


def raises(expected, *args, match=None, **kwargs):
    ctx = _RaisesContext(expected, match)
    if args:
        with ctx:
            args[0](*args[1:], **kwargs)
        return ctx
    return ctx


def warns(expected=Warning, *, match=None):
    import re
    import warnings

    class _WarnsContext(warnings.catch_warnings):
        def __enter__(self):
            self.list = super().__enter__()
            warnings.simplefilter("always")
            return self.list

        def __exit__(self, *exc):
            super().__exit__(*exc)
            if exc[0] is not None:
                return False
            for w in self.list:
                if issubclass(w.category, expected) and (
                    match is None or re.search(match, str(w.message))
                ):
                    return False
            raise Failed(f"DID NOT WARN {expected!r}")

    return _WarnsContext(record=True)


class _Approx:
    def __init__(self, expected, rel=None, abs=None):
        self.expected = expected
        self.rel = 1e-6 if rel is None else rel
        self.abs = 1e-12 if abs is None else abs

    def _close(self, a, b):
        if isinstance(b, dict):
            return (
                isinstance(a, dict)
                and a.keys() == b.keys()
                and all(self._close(a[k], b[k]) for k in b)
            )
        if isinstance(b, (list, tuple)):
            return (
                isinstance(a, (list, tuple))
                and len(a) == len(b)
                and all(self._close(x, y) for x, y in zip(a, b, strict=False))
            )
        try:
            if a == b:
                return True
            return _math.isclose(a, b, rel_tol=self.rel, abs_tol=self.abs)
        except TypeError:
            return False

    def __eq__(self, other):
        return self._close(other, self.expected)

    def __repr__(self):
        return f"approx({self.expected!r})"


def approx(expected, rel=None, abs=None):
    return _Approx(expected, rel, abs)


class _Mark:
    def parametrize(self, argnames, argvalues, ids=None, **_kw):
        def deco(f):
            f._parametrize = getattr(f, "_parametrize", []) + [(argnames, list(argvalues), ids)]
            return f

        return deco

    def skip(self, *args, **_kw):
        if args and callable(args[0]):
            args[0]._skip = True
            return args[0]

        def deco(f):
            f._skip = True
            return f

        return deco

    def skipif(self, condition, *args, **_kw):
        def deco(f):
            if condition:
                f._skip = True
            return f

        return deco

    def xfail(self, *args, **_kw):
        if args and callable(args[0]):
            args[0]._xfail = True
            return args[0]

        def deco(f):
            f._xfail = True
            return f

        return deco

    def __getattr__(self, name):
        return lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f)


mark = _Mark()
