"""Class names are data: the one policy for which names can be stored, and the check every entry point uses.

A class name comes from data a stranger may control: the label column of a
CSV, the name of a class folder, a label saved in a MONAI Label datastore
(``cxrkit review export``). It ends up in a run folder's
``configs/metadata.json``, in file names, in reports and on the review page.
The run folder's configs never contain the names (they read them from
``metadata.json`` at run time, :func:`cxrkit.runfolder.class_names`), but MONAI
loads ``metadata.json`` into its config parser too, where a string starting
with ``$`` is Python code, ``@`` a reference, ``%`` a macro and ``#`` the id
separator. So every entry point refuses a name that cannot be stored safely,
with :func:`check_class_names`:

* empty names, and names longer than :data:`MAX_LENGTH` characters;
* a first character ``$``, ``@`` or ``%`` (MONAI config sigils);
* ``#`` anywhere (MONAI's id separator), ``/`` or ``\\`` (path separators), ``.`` and ``..``;
* control and invisible formatting characters (new lines, tabs, right-to-left overrides...).

Spaces, hyphens, brackets and any letters (``Pneumonía``, ``肺炎``) are fine.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Iterable

from cxrkit.data.errors import DatasetError

__all__ = ["MAX_LENGTH", "POLICY", "ClassNameError", "class_name_problem", "check_class_names"]

#: the longest class name accepted.
MAX_LENGTH = 64
#: the policy in one sentence (ends every error message).
POLICY = (f"class names are 1-{MAX_LENGTH} characters, do not start with $, @ or %, and contain no #, / or \\ "
          "and no control characters")
_SIGILS = {
    "$": "which MONAI bundle configs run as Python code",
    "@": "which MONAI bundle configs read as a reference to another config entry",
    "%": "which MONAI bundle configs read as a macro (a file to include)",
}
_FORBIDDEN = {
    "#": "'#', MONAI's config id separator",
    "/": "'/', a path separator",
    "\\": "'\\', a path separator",
}
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class ClassNameError(DatasetError):
    """A class name that cannot be stored safely; the message names where it came from, why, and the policy."""


def class_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be used as a class name, or ``None`` when it can.

    Args:
        name: the candidate name.

    Returns:
        The reason in words (``"it starts with '$', which ..."``), or ``None``.
    """
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not text"
    if not name.strip():
        return "it is empty"
    if len(name) > MAX_LENGTH:
        return f"it is {len(name)} characters long (at most {MAX_LENGTH})"
    if name[0] in _SIGILS:
        return f"it starts with {name[0]!r}, {_SIGILS[name[0]]}"
    for char, what in _FORBIDDEN.items():
        if char in name:
            return f"it contains {what}"
    if name in (".", ".."):
        return f"{name!r} names a folder"
    for char in name:
        if unicodedata.category(char) in _INVISIBLE:
            return f"it contains the control or invisible character U+{ord(char):04X}"
    return None


def check_class_names(names: Iterable[Any], where: str) -> list[str]:
    """The names, checked: every one can be stored safely.

    Args:
        names: class names.
        where: where they come from, for the message (``"csv: column label of data.csv"``).

    Returns:
        The names as a list.

    Raises:
        ClassNameError: the first name that cannot be used: where it came from, the name, why, and the policy.
    """
    names = list(names)
    for name in names:
        problem = class_name_problem(name)
        if problem is not None:
            raise ClassNameError(
                f"{where}: the class name {_shown(name)} cannot be used: {problem}. Rename the class; {POLICY}."
            )
    return names


def _shown(name: Any) -> str:
    """The name for a message: quoted, escaped, shortened."""
    text = repr(name)  # quotes; control characters escaped
    return text if len(text) <= 90 else text[:80] + "...'"
