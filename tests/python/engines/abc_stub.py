"""Stand-in engine base classes built from a manifest (sglang_manifest.py,
lmcache_manifest.py, ucm_manifest.py): an ABC whose methods are exactly the
manifest's, abstract ones abstract, so an adapter that misses one fails at
construction; the non-abstract ones return the manifest's default."""

import abc
import sys
import types


def _function(name, params, abstract, default, is_async):
    args = ", ".join(["self"] + list(params))
    body = "raise NotImplementedError" if abstract else f"return {default!r}"
    ns = {}
    exec(f"{'async ' if is_async else ''}def {name}({args}):\n    {body}\n", ns)  # noqa: S102 - manifest names
    fn = ns[name]
    return abc.abstractmethod(fn) if abstract else fn


def build_abc(class_name, methods, attrs=None):
    """methods: name -> (parameter names after self, abstract, default[, async])."""
    body = dict(attrs or {})
    for name, spec in methods.items():
        params, abstract, default = spec[:3]
        is_async = len(spec) > 3 and spec[3]
        body[name] = _function(name, params, abstract, default, is_async)
    return abc.ABCMeta(class_name, (abc.ABC,), body)


def install_modules(modules):
    """modules: dotted name -> dict of attributes; parents are made empty."""
    made = {}
    for name, attrs in modules.items():
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent not in sys.modules and parent not in made:
                made[parent] = types.ModuleType(parent)
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        made[name] = m
    sys.modules.update(made)
    return made


def uninstall(prefixes):
    for name in [n for n in sys.modules if n.split(".")[0] in prefixes]:
        del sys.modules[name]
