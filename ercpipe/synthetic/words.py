"""The transcripts of the synthetic corpus: filler sentences, an emotion hint lexicon, MELD's typography.

Text carries the label for `hint_probability` of the utterances: a sentence from a small emotion
lexicon (learnable, not trivially perfect) placed among one or two neutral filler sentences.
"""
from __future__ import annotations

import numpy as np

from ercpipe.labels import canonical_emotion

FILLERS: tuple[str, ...] = (
    "I went by the post office on the way here.",
    "We should look at the schedule for tomorrow.",
    "The meeting got moved to four o'clock.",
    "My brother called me this morning.",
    "There's a new place on the corner of the street.",
    "I left my keys on the kitchen table.",
    "She said the train was running late again.",
    "Can you tell me what time it is?",
    "We need to talk about the apartment.",
    "I've been thinking about the trip.",
    "He told me about the job interview.",
    "The car is parked across the street.",
    "I didn't expect to see you here today.",
    "Let's go over the plan one more time.",
    "They're coming over for dinner on Friday.",
    "You know what I mean about the letter.",
    "I have to finish the report by Monday.",
    "We watched the game at Joe's place.",
    "It's the same thing every single week.",
    "The phone rang twice before I picked up.",
    "I was reading the paper in the lobby.",
    "Did you get the message I sent you?",
    "We could take the bus instead.",
    "The coffee machine is on the second floor.",
)

HINTS: dict[str, tuple[str, ...]] = {
    "neutral": ("Okay, that's fine.", "Sure, I can do that.", "Alright, I see.", "Yes, that works for me.",
                "I understand.", "Fair enough."),
    "happy": ("I'm really glad about that.", "That makes me so happy.", "What a lovely thing to hear.",
              "I'm pleased, honestly.", "That's so sweet of you.", "I feel good about this."),
    "excited": ("This is amazing, I can't wait!", "Oh wow, that's fantastic!", "I'm so thrilled!",
                "That's incredible news!", "This is the best day ever!", "Yes! We did it!"),
    "sad": ("I miss her so much.", "I feel so lonely now.", "It breaks my heart.", "I'm just so sad about it.",
            "Nothing will ever be the same.", "I can't stop crying."),
    "anger": ("I'm absolutely furious with you!", "Don't you dare talk to me like that!", "I hate this so much!",
              "Get out of my face!", "This is outrageous!", "How dare you!"),
    "frustration": ("This is so annoying.", "Why does this always happen to me?", "I'm sick of waiting.",
                    "Nothing ever works here.", "I've told you this a hundred times.", "This is useless."),
    "surprise": ("What? Really?", "No way, are you serious?", "I can't believe it!", "Wait, what just happened?",
                 "You're kidding me!", "Whoa, I didn't see that coming!"),
    "fear": ("I'm really scared.", "Please, I'm so afraid.", "Something terrible is going to happen.",
             "I'm terrified of it.", "Did you hear that noise?", "I don't want to be alone here."),
    "disgust": ("Ew, that's disgusting.", "That's so gross.", "Yuck, get it away from me.",
                "That's revolting.", "I think I'm going to be sick.", "That smells awful."),
}

_MELD_OPENERS = ("Oh, ", "Well, ", "Hey, ", "Okay, ", "Y’know, ", "Look, ")


def make_text(rng: np.random.Generator, emotion: str | None, hint_probability: float) -> str:
    """One or two filler sentences, plus (with `hint_probability`) a hint sentence for `emotion`."""
    parts = [FILLERS[int(rng.integers(len(FILLERS)))]]
    if rng.random() < 0.3:
        parts.append(FILLERS[int(rng.integers(len(FILLERS)))])
    if emotion is not None and rng.random() < hint_probability:
        hints = HINTS[canonical_emotion(emotion)]
        parts.insert(int(rng.integers(len(parts) + 1)), hints[int(rng.integers(len(hints)))])
    return " ".join(parts)


def meld_style_text(text: str, rng: np.random.Generator) -> str:
    """The real MELD CSVs' typography: curly apostrophes, an opener or a false start, trailing ellipses."""
    text = text.replace("'", "’")
    roll = rng.random()
    if roll < 0.25:
        opener = _MELD_OPENERS[int(rng.integers(len(_MELD_OPENERS)))]
        keep_case = text.startswith(("I ", "I’"))
        text = opener + (text if keep_case else text[0].lower() + text[1:])
    elif roll < 0.35:
        first = text.partition(" ")[0]
        text = f"{first}— {text}"  # a false start: "I— I went ..."
    if text.endswith(".") and rng.random() < 0.2:
        text = text[:-1] + "…"
    return text
