"""The modalities, the class lists of the supported datasets and the aliases that map other spellings onto them.

The label ids are the ones the SDT / SDT-VEGA feature pickles use (spec table 1.3), so features and
checkpoints exchanged with the official code keep their meaning.
"""
from __future__ import annotations

# Every modality the pipeline knows, in the order configs, checkpoints and the pickles list them. This
# module imports nothing: the config checks, the pickle import and the training code all read it.
MODALITIES: tuple[str, ...] = ("text", "audio", "visual")

# The manifest stores each dataset's own label spelling (IEMOCAP's three-letter codes, MELD's words);
# the id is the position in this list.
IEMOCAP_CLASSES: tuple[str, ...] = ("hap", "sad", "neu", "ang", "exc", "fru")
MELD_CLASSES: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")

CLASSES_BY_FORMAT: dict[str, tuple[str, ...]] = {"iemocap": IEMOCAP_CLASSES, "meld": MELD_CLASSES}

# Canonical emotion name -> every spelling seen in datasets, anchor folders and the official code.
_ALIAS_GROUPS: dict[str, tuple[str, ...]] = {
    "happy": ("happy", "hap", "happiness", "joy"),
    "sad": ("sad", "sadness"),
    "neutral": ("neutral", "neu"),
    "anger": ("anger", "angry", "ang"),
    "excited": ("excited", "exc", "excitement"),
    "frustration": ("frustration", "frustrated", "fru"),
    "surprise": ("surprise", "surprised", "sur"),
    "fear": ("fear", "fearful", "fea"),
    "disgust": ("disgust", "disgusted", "dis"),
}
_CANONICAL: dict[str, str] = {alias: name for name, aliases in _ALIAS_GROUPS.items() for alias in aliases}


def canonical_emotion(name: str) -> str:
    """Map any known spelling ('hap', 'joy', 'Angry') to one canonical emotion name ('happy', 'anger').

    Unknown names are returned lower-cased, so a dataset with its own classes still works as long as
    its anchor folders use the same words.
    """
    key = name.strip().lower()
    return _CANONICAL.get(key, key)


def emotion_aliases(name: str) -> tuple[str, ...]:
    """Every spelling that canonical_emotion maps onto the same name as `name` (canonical name first)."""
    canonical = canonical_emotion(name)
    return _ALIAS_GROUPS.get(canonical, (canonical,))


def vega_label_order(classes) -> list[str]:
    """The classes whose position is the label id VEGA's 7-tuple pickle gives them (ercpipe.features.pickles
    numbers labels by IEMOCAP's or MELD's official list, whichever holds the classes), up to the highest id the
    classes take: the rows of an exported 35_anchor.pt, which the official code indexes by label id. Classes of
    neither list are returned as given (the export check refuses them)."""
    classes = list(classes)
    for known in CLASSES_BY_FORMAT.values():
        if classes and set(classes) <= set(known):
            return list(known[:max(known.index(c) for c in classes) + 1])
    return classes


def official_class_list(classes) -> str | None:
    """'iemocap' or 'meld' when `classes` are that dataset's classes in its label-id order (any spelling),
    else None: the official code's hard-coded class weights (ercpipe.model.losses) exist only for those."""
    given = tuple(canonical_emotion(c) for c in classes)
    for name, known in CLASSES_BY_FORMAT.items():
        if given == tuple(canonical_emotion(c) for c in known):
            return name
    return None
