"""The embedded synthetic raw corpus: IEMOCAP- and MELD-shaped trees, so the pipeline runs with no dataset.

A demo and test aid: the readers in ercpipe.datasets read the trees it writes like any real release.
Modules, by topic:

* settings: DEFAULT_SETTINGS, SETTINGS_DOC, LARGE_SETTINGS, `preset`, `resolve_settings` (validation),
  `meld_defects` (the deliberate MELD defects);
* words: the transcripts (filler sentences, the emotion hint lexicon, MELD's typography);
* speech: espeak-ng voices with emotion-dependent prosody, FFT resampling;
* faces: drawn faces whose expression shows the emotion (corpus video and the demo's CLIP anchor images,
  `make_anchor_image_set`);
* video: frame encoding (DivX .avi, H.264 + AAC .mp4), the look of rooms and actors;
* layouts: the writers `generate_iemocap` and `generate_meld` (file trees, line formats, timing).

Every modality carries the label, so a model can learn it:

* text: filler sentences plus, for `hint_probability` of the utterances, a sentence from a small
  emotion lexicon (learnable, not trivially perfect);
* speech: espeak-ng (Debian package `espeak-ng`) with emotion-dependent pitch, rate and amplitude
  around each speaker's own voice, resampled to 16 kHz;
* video: drawn faces (ercpipe.synthetic.faces) whose expression shows the emotion, found by the real
  MTCNN.

Generation is deterministic: the same settings give byte-identical files (text, wav, avi, mp4 with
this PyAV/FFmpeg build); every random choice comes from numpy generators seeded by `seed` and the
item's position, never from the order of work.
"""
from ercpipe.synthetic.faces import FaceStyle, draw_body, draw_face, make_anchor_image_set, random_style
from ercpipe.synthetic.layouts import MELD_CAST, MELD_GUESTS, generate_iemocap, generate_meld
from ercpipe.synthetic.settings import (DEFAULT_SETTINGS, IEMOCAP_EXTRA_LABELS, IEMOCAP_SPLITS, LARGE_SETTINGS,
                                        MELD_CLIP_DIRS, MELD_CSV_HEADER, MELD_DEFECTS, MELD_SPLITS, SETTINGS_DOC,
                                        meld_defects, preset, resolve_settings)
from ercpipe.synthetic.speech import PROSODY, Voice, espeak_binary, random_voice, resample, speak
from ercpipe.synthetic.words import FILLERS, HINTS, make_text, meld_style_text

__all__ = [
    "DEFAULT_SETTINGS", "FILLERS", "HINTS", "IEMOCAP_EXTRA_LABELS", "IEMOCAP_SPLITS", "LARGE_SETTINGS", "MELD_CAST",
    "MELD_CLIP_DIRS", "MELD_CSV_HEADER", "MELD_DEFECTS", "MELD_GUESTS", "MELD_SPLITS", "PROSODY", "SETTINGS_DOC",
    "FaceStyle", "Voice", "draw_body", "draw_face", "espeak_binary", "generate_iemocap", "generate_meld",
    "make_anchor_image_set", "make_text", "meld_defects", "meld_style_text", "preset", "random_style",
    "random_voice", "resample", "resolve_settings", "speak",
]
