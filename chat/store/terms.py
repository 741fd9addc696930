"""The search terms of a text, the same for a page being indexed and a question being asked.

Both databases index these terms with their own full-text engines (SQLite FTS5, PostgreSQL
tsvector), so one tokenization decides what matches on both. Latin-script words are lowercased
and lose a plural "s"; a word of letters and digits is also its parts. Korean and other CJK text
is cut into overlapping two-character pieces, the standard for these scripts (Lucene's CJK
analyzer does it too): Korean attaches particles to words ("전압은" is "전압" + "은"), and most
Korean nouns are two syllables, which a trigram index (FTS5's trigram tokenizer) cannot match at all.
"""

from __future__ import annotations

import re

# Runs of CJK characters (Hangul syllables and jamo, kana, CJK ideographs), or of other letters and
# digits, where a point or comma inside keeps a number whole ("5.5", "1,024").
CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
TOKEN = re.compile(rf"[{CJK}]+|[^\W_{CJK}]+(?:[.,][^\W_{CJK}]+)*")
CJK_RUN = re.compile(rf"[{CJK}]+")
# A token mixing letters and digits ("5.5v", "lm317") is also indexed as its parts, so "5.5V" finds "5.5 V".
MIXED_PARTS = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
# Words in nearly every English question; they would make every page a candidate and rank nothing.
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i in is it its me my of on or that the this to "
    "was what when where which who why will with you your".split()
)
MAX_QUERY_TERMS = 64  # a question's distinct terms past this add cost, not recall


def terms(text: str) -> list[str]:
    """`text`'s terms in order, repeats kept (term frequency counts in ranking)."""
    found = []
    for token in TOKEN.findall(text.lower()):
        if CJK_RUN.fullmatch(token):
            found += [token] if len(token) == 1 else [token[i : i + 2] for i in range(len(token) - 1)]
        else:
            plural = len(token) > 3 and token[-1] == "s" and token[-2].isalpha() and token[-2] != "s"
            word = token[:-1] if plural else token
            found.append(word)
            if len(parts := MIXED_PARTS.findall(word)) > 1:
                found += parts
    return found


def query_terms(question: str) -> list[str]:
    """The distinct terms to search for, in the order asked, without English stopwords."""
    distinct = dict.fromkeys(term for term in terms(question) if term not in STOPWORDS)
    return list(distinct)[:MAX_QUERY_TERMS]
