"""A small naive Bayesian token classifier (Graham's "A Plan for Spam" with Robinson's
smoothing), over counts the reputation store keeps per user.

Why our own: the Python candidates are unmaintained (SpamBayes last released in 2008, for
Python 2) or general machine-learning stacks (scikit-learn, with numpy and scipy, hundreds
of megabytes, and a model that must be refitted instead of counts updated in place per
move). What a per-user mail filter needs is about forty lines: token counts in SQLite,
updated one message at a time as the user moves mail, and a probability from the most
telling tokens — the same design as mox's and bogofilter's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# Robinson's f(w): a token seen n times is pulled towards 0.5 with strength S.
STRENGTH = 1.0
ASSUMED = 0.5
INTERESTING = 15  # the tokens farthest from 0.5 decide
MIN_TRAINED = 2  # messages of each class before the classifier speaks


def token_probability(spam: int, ham: int, spam_total: int, ham_total: int) -> float:
    """How spammy one token is, smoothed (Robinson, "A Statistical Approach to the Spam
    Problem", 2003)."""
    spam_ratio = spam / spam_total if spam_total else 0.0
    ham_ratio = ham / ham_total if ham_total else 0.0
    if spam_ratio + ham_ratio == 0:
        return ASSUMED
    p = spam_ratio / (spam_ratio + ham_ratio)
    n = spam + ham
    return (STRENGTH * ASSUMED + n * p) / (STRENGTH + n)


def spam_probability(
    counts: Iterable[tuple[int, int]], spam_total: int, ham_total: int
) -> float | None:
    """Probability that the message is spam from its known tokens' (spam, ham) counts;
    None when the user has not trained enough of both kinds."""
    if spam_total < MIN_TRAINED or ham_total < MIN_TRAINED:
        return None
    probs = [token_probability(s, h, spam_total, ham_total) for s, h in counts]
    probs = sorted(probs, key=lambda p: abs(p - 0.5), reverse=True)[:INTERESTING]
    if not probs:
        return None
    # Combined in log space (Graham's product would underflow for long lists).
    log_spam = sum(math.log(max(p, 1e-6)) for p in probs)
    log_ham = sum(math.log(max(1 - p, 1e-6)) for p in probs)
    return 1.0 / (1.0 + math.exp(log_ham - log_spam))
