"""The six RSNA 2019 labels, in the order every array in this project uses."""

from __future__ import annotations

#: Five subtypes then "any"; column ``k`` of every ``(N, 6)`` array is ``CLASSES[k]``.
CLASSES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)
SUBTYPES: tuple[str, ...] = CLASSES[:5]
ANY_INDEX: int = 5
#: Short names used in the poster and on screen.
SHORT_NAMES: dict[str, str] = {
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
    "any": "any",
}
