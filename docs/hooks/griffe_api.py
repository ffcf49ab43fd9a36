"""Griffe extension for the API page: leave out class attributes that have no docstring.

vlens' dataclasses declare their fields as annotated attributes; rendered one by one they
bury the methods. The class signature (``merge_init_into_class``) already lists every field
with its type and default, so once Griffe's dataclass support has built each ``__init__``
from the fields, undocumented class attributes are dropped from what the page renders.
Documented attributes, module constants and everything else stay. Written for Griffe 2
(``griffelib``, which mkdocstrings-python 2 brings).
"""

from __future__ import annotations

import griffe


class DropUndocumentedClassAttributes(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        # Build the dataclass __init__ signatures first, while the fields are still there
        # (the built-in pass then finds them done and skips them).
        griffe.DataclassesExtension().on_package(pkg=pkg, **kwargs)
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        for name, member in list(obj.members.items()):
            if member.is_alias:
                continue
            if obj.is_class and member.is_attribute and not member.docstring:
                obj.del_member(name)
            elif member.is_module or member.is_class:
                self._walk(member, seen)
