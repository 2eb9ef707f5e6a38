"""The defect classes the model can name, and the id each has in a class map.

The six classes of the Peregrine taxonomy that the generator draws (`training/renderer/defects.py` says how each
changes the surface). A class map (the generator's truth, a class model's output mask) holds 0 where there is no
defect and `CLASS_IDS[name]` where there is one; a class model names these classes in this order
(`ModelConfig.class_names`), so its output k + 1 is the class with id k + 1. The answer, the page, the client's CSV and the metrics name classes
by these strings.

Standard library only: the factory client and the page server read these names without numpy or torch.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFECT_CLASSES: tuple[str, ...] = (
    "recoater_streak",
    "recoater_hopping",
    "incomplete_spreading",
    "swelling",
    "spatter",
    "pit",
)
CLASS_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(DEFECT_CLASSES)}  # 0 means no defect
# How the page and the client's overlays draw each class (the Okabe-Ito palette, told apart with colour-vision
# deficiencies; the page also names the class in text, so colour is never the only cue), and a region without a class.
CLASS_COLOURS: dict[str, str] = {
    "recoater_streak": "#E69F00",
    "recoater_hopping": "#56B4E9",
    "incomplete_spreading": "#009E73",
    "swelling": "#F0E442",
    "spatter": "#0072B2",
    "pit": "#D55E00",
}
UNCLASSIFIED_COLOUR = "#CC79A7"


def class_label(name: str) -> str:
    """The class's name for people: "recoater streak"."""
    return name.replace("_", " ")


def check_class_names(
    names: Iterable[str], known: Iterable[str] = DEFECT_CLASSES, what: str = "class"
) -> tuple[str, ...]:
    """`names` as a tuple without repeats, or a ValueError that names the unknown ones and lists the accepted."""
    known = tuple(known)
    names = tuple(dict.fromkeys(names))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown {what}(es) {', '.join(repr(n) for n in unknown)}; accepted: {', '.join(known) or 'none'}"
        )
    return names
