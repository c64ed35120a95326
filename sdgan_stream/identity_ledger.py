"""One person, one fake identity for the whole video: a new track of someone seen before (who left the
frame and came back, or whose track broke) gets that person's identity seed again.

The ledger remembers, per fake identity (its seed), the embeddings of the ORIGINAL face it replaced:
the identity guard's kept views of the track that last verified that seed. When a new track asks,
its own original views are compared with every remembered person, strictly:

- every view of the new track must lie within ``threshold`` of the person's nearest embedding, the
  keep-faces strictness (:data:`~sdgan_stream.exempt.STRICTNESS` x the recognizer's same-person
  distance, dlib 0.6 -> 0.42; the same face under jitter measures 0.04-0.23 there, different people
  from 0.63), on at least ``min_views`` views (two frames, not one lucky embedding);
- exactly one person may match: two candidates are doubt;
- a person whose identity is on screen on another track right now is not a candidate (one fake face
  must not appear twice in a frame).

Doubt always ends in a new identity, which is always safe. A match only proposes the seed: the guard
still verifies it against this track's own original, like any seed, and draws a new one if it fails.
Being wrong here never shows a real face; at worst two different people share one fake face.

Memory is bounded: at most ``capacity`` persons (64; the least recently seen is dropped first) and
none unseen for more than ``max_age`` frames (1500) of the guard's clock, which counts the frames that
had faces to render (about a minute of them at 25 fps; empty stretches of video do not age anyone).
The embeddings live in memory only, one ledger per video (a cluster worker's next video gets an
empty one), and are never written anywhere.

Only views of DETECTED faces count (a look-back or predicted box may hold no face: on a clip where a
person came back, the look-back view of the first returning frame was a blank wall, 0.84 from them).
So while the ledger holds anyone, a new track is covered on its look-back frames (at most the
look-back, 0.5 s) and on its first detected frame, until two detected views have answered: an
over-covered entry, never a leaked or wrongly shared face. Cost: nothing while the ledger is empty;
otherwise one embedding per detected view of a new track (two at most), and for a returning person
one verification instead of a draw of ``candidates`` faces.

>>> import numpy as np
>>> ledger = IdentityLedger(threshold=0.42)
>>> ledger.remember(seed=11, embeddings=np.zeros((2, 128), np.float32), frame=1)
>>> ledger.match(np.full((2, 128), 0.01, np.float32), frame=40).seed
11
>>> ledger.match(np.full((1, 128), 0.01, np.float32), frame=40).kind  # one view: ask again with another
'pending'
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["IdentityLedger", "LedgerMatch"]


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)


@dataclass(frozen=True)
class LedgerMatch:
    """The ledger's answer for one track: ``match`` (re-use ``seed``), ``pending`` (its views so far
    match exactly one person, but fewer than ``min_views``: ask again with another view), ``none``."""

    kind: Literal["match", "pending", "none"]
    seed: int | None = None


@dataclass
class _Person:
    embeddings: np.ndarray  # (k, d) original views of the track that last verified this identity
    last_seen: int


class IdentityLedger:
    """Remembers which fake identity replaced which person (see the module docstring). Not thread-safe."""

    def __init__(
        self,
        *,
        threshold: float,
        distances: Callable[[np.ndarray, np.ndarray], np.ndarray] = _euclidean,
        min_views: int = 2,
        capacity: int = 64,
        max_age: int = 1500,
    ) -> None:
        if threshold <= 0 or min_views < 1 or capacity < 1 or max_age < 1:
            raise ValueError("ledger threshold, views, capacity and age must be positive")
        self.threshold = threshold
        self.distances = distances
        self.min_views = min_views
        self.capacity = capacity
        self.max_age = max_age
        self._persons: OrderedDict[int, _Person] = OrderedDict()  # least recently seen first

    @classmethod
    def for_recognizer(cls, recognizer, **options) -> IdentityLedger:
        """A ledger on ``recognizer``'s scale, at the keep-faces strictness."""
        from .exempt import STRICTNESS

        return cls(threshold=STRICTNESS * recognizer.same_person_distance, distances=recognizer.distances, **options)

    def empty_copy(self) -> IdentityLedger:
        """A ledger with the same settings and nobody in it (the next video)."""
        return IdentityLedger(threshold=self.threshold, distances=self.distances, min_views=self.min_views,
                              capacity=self.capacity, max_age=self.max_age)

    def __len__(self) -> int:
        return len(self._persons)

    def forget_old(self, frame: int) -> None:
        """Drop the persons unseen for more than ``max_age`` frames (the oldest come first)."""
        while self._persons:
            seed, person = next(iter(self._persons.items()))
            if frame - person.last_seen <= self.max_age:
                break
            del self._persons[seed]

    def remember(self, *, seed: int, embeddings: np.ndarray, frame: int) -> None:
        """``seed`` was verified on a face whose original views are ``embeddings`` (n, d)."""
        embeddings = np.atleast_2d(np.asarray(embeddings, np.float32))
        if not len(embeddings):
            return
        self._persons[int(seed)] = _Person(embeddings.copy(), frame)
        self._persons.move_to_end(int(seed))
        while len(self._persons) > self.capacity:
            self._persons.popitem(last=False)

    def seen(self, seed: int, frame: int) -> None:
        """The identity ``seed`` is on screen at ``frame`` (keeps it from ageing out)."""
        person = self._persons.get(int(seed))
        if person is not None:
            person.last_seen = frame
            self._persons.move_to_end(int(seed))

    def match(self, views: np.ndarray, *, frame: int, exclude: Collection[int] = ()) -> LedgerMatch:
        """Whose identity a new track with original views ``views`` (n, d) should re-use, if anyone's."""
        self.forget_old(frame)
        views = np.atleast_2d(np.asarray(views, np.float32))
        if not len(views) or not self._persons:
            return LedgerMatch("none")
        matching = [seed for seed, person in self._persons.items() if seed not in exclude
                    and bool((self.distances(views, person.embeddings).min(axis=1) < self.threshold).all())]
        if len(matching) != 1:  # nobody, or several people: doubt
            if len(matching) > 1:
                log.info("identity ledger: a new track matches %d remembered people: new identity", len(matching))
            return LedgerMatch("none")
        if len(views) < self.min_views:
            return LedgerMatch("pending")
        return LedgerMatch("match", matching[0])
