"""Text search over completions: what text is searchable, how the index narrows, how a match is decided.

Every write computes two columns with :func:`search_columns` (through
``completions.completion_values``, the one function every write path uses):

- ``search_text``: the case-folded searchable text (input messages: string content, text
  parts, tool call names and arguments; every reply: content, refusal, tool call names and
  arguments), pieces joined by newlines. A trigram index serves it: SQLite's FTS5
  ``trigram`` table ``completions_search``, on PostgreSQL the ``pg_trgm`` column of the GIN
  index ``ix_completions_search_text_grams``.
- ``search_grams``: the CJK characters and CJK character pairs of that text, space-separated,
  for terms shorter than a trigram (``退款``, ``发票``): a second column of the trigram table
  (between spaces, so that a word is a phrase of its trigrams) and the FTS5 ``unicode61`` table
  ``completions_grams`` on SQLite, the other column of that GIN index (its words) on PostgreSQL:
  one index over both, so that a trigram term and a gram are intersected inside one scan.

The database keeps both indexes itself (triggers on SQLite, index maintenance on
PostgreSQL, all created by the migration), in the transaction of the write. A deleted
completion has both columns NULL, so no index holds it. The index only narrows: a final
exact substring test on ``search_text`` decides every match.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Integer, and_, cast, MetaData, String, Table, Text, bindparam, func, literal_column, or_, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.selectable import Join

from ..models import Completion
from ..validation import fold

# The SQLite FTS5 tables (the trigram one contentless, the gram one external content on
# ``completions``: migration 0013) and the PostgreSQL indexes the migrations create; models.py
# does not describe them (see ``models.SEARCH_INDEX_NAMES``).
# The trigram table holds the gram words too (migration 0010): it is more than a trigram index now.
FTS_TEXT = "completions_search"
FTS_GRAMS = "completions_grams"
TRIGRAM = 3

# Scripts written without spaces between words, where two-character words are common.
_CJK_RANGES = (
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3040, 0x30FF),  # Hiragana, Katakana (with ー)
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF66, 0xFF9F),  # Halfwidth Katakana
    (0x20000, 0x3FFFF),  # CJK Extensions B and later
)


_CJK_RUN = re.compile("[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in _CJK_RANGES) + "]+")


def is_cjk(char: str) -> bool:
    """Return whether ``char`` belongs to a script the two-character index covers."""
    return _CJK_RUN.fullmatch(char) is not None


def _content_texts(content: Any) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                for name in ("text", "refusal"):
                    if isinstance(part.get(name), str):
                        yield part[name]


def _call_texts(message: Mapping[str, Any]) -> Iterator[str]:
    calls = list(message.get("tool_calls") or []) if isinstance(message.get("tool_calls"), list) else []
    if isinstance(message.get("function_call"), dict):
        calls.append({"function": message["function_call"]})
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for name in ("name", "arguments"):
                value = function.get(name)
                if isinstance(value, str):
                    yield value
                elif value is not None:
                    yield json.dumps(value, ensure_ascii=False)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_pieces(*, body: Mapping[str, Any] | None, messages: Iterable[Any] | None) -> list[str]:
    """Return the searchable texts of a completion as written (not folded), inputs first, then each reply."""
    pieces: list[str] = []
    for message in messages or []:
        if isinstance(message, dict):
            pieces.extend(_content_texts(message.get("content")))
            pieces.extend(_call_texts(message))
    for choice in (body or {}).get("choices") or []:
        reply = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(reply, dict):
            pieces.extend(_content_texts(reply.get("content")))
            if isinstance(reply.get("refusal"), str):
                pieces.append(reply["refusal"])
            pieces.extend(_call_texts(reply))
    # Text columns cannot keep NUL or a lone surrogate (not UTF-8), and no search term can hold either.
    return [_UNSTORABLE.sub(" ", piece) for piece in pieces if piece]


def _cjk_runs(folded: str) -> list[str]:
    return _CJK_RUN.findall(folded)


def _run_grams(run: str) -> list[str]:
    """The grams a run of CJK characters is indexed (or looked up) by: its pairs, or the character alone."""
    return [run[i : i + 2] for i in range(len(run) - 1)] or [run]


def cjk_grams(folded: str) -> str:
    """Return the distinct CJK characters and adjacent pairs of ``folded`` text, space-separated, sorted."""
    grams: set[str] = set()
    for run in _cjk_runs(folded):
        grams.update(run)
        grams.update(run[i : i + 2] for i in range(len(run) - 1))
    return " ".join(sorted(grams))


def search_columns(*, body: Mapping[str, Any] | None, messages: Iterable[Any] | None) -> dict[str, str]:
    """Return the ``search_text`` and ``search_grams`` column values of a completion."""
    folded = fold("\n".join(text_pieces(body=body, messages=messages)))
    return {"search_text": folded, "search_grams": cjk_grams(folded)}


# --- Narrowing and deciding ---------------------------------------------------------------------


def _term_grams(term: str) -> list[str]:
    """The gram-index words that every text holding ``term`` holds: the pairs (or lone characters)
    of its CJK runs (none: it has no CJK character)."""
    grams: list[str] = []
    for run in _cjk_runs(term):
        grams.extend(_run_grams(run))
    return list(dict.fromkeys(grams))


def _fts_phrase(token: str) -> str:
    return '"' + token.replace('"', '""') + '"'


@dataclass(frozen=True)
class Narrowing:
    """What the indexes can use of some search terms: trigrams, CJK grams, and the terms no index decides.

    ``undecided``: the terms an index cannot decide on its own (too short for trigrams and not
    wholly CJK); they are tested on the text itself.
    """

    trigram_terms: tuple[str, ...]
    grams: tuple[str, ...]
    unindexed: tuple[str, ...]
    undecided: tuple[str, ...] = ()

    @property
    def indexed(self) -> bool:
        return bool(self.trigram_terms or self.grams)


def narrowing(terms: Iterable[str]) -> Narrowing:
    """Return how the indexes serve ``terms``: 3+ characters by trigrams, shorter CJK terms by grams."""
    trigram_terms: list[str] = []
    grams: list[str] = []
    unindexed: list[str] = []
    undecided: list[str] = []
    for term in terms:
        if len(term) >= TRIGRAM:
            trigram_terms.append(term)
        elif short := _term_grams(term):
            grams.extend(short)
            # A one- or two-character CJK term is itself a word of the gram index; "A股" is not.
            if short != [term]:
                undecided.append(term)
        else:
            unindexed.append(term)
            undecided.append(term)
    return Narrowing(tuple(trigram_terms), tuple(dict.fromkeys(grams)), tuple(unindexed), tuple(undecided))


def _like_pattern(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# The SQLite FTS5 tables as tables: a rowid is the completion's seq. The trigram table holds the
# gram words between spaces (" 发 发票 票 ", migration 0010), and no copy of the texts (0013).
_fts_text = Table(FTS_TEXT, MetaData(), Column("rowid", Integer))
_fts_grams = Table(FTS_GRAMS, MetaData(), Column("rowid", Integer))


def _text_phrases(terms: Iterable[str]) -> list[str]:
    """The trigram table's phrases for terms of three or more characters: each a substring of the text."""
    return [f"search_text : {_fts_phrase(term)}" for term in terms]


def _gram_phrases(grams: Iterable[str], table: Table) -> list[str]:
    """The phrases for gram words: a word of the gram table, or one between spaces in the trigram table's gram column."""
    if table is _fts_grams:
        return [_fts_phrase(gram) for gram in grams]
    return [f"search_grams : {_fts_phrase(f' {gram} ')}" for gram in grams]


def _fts_select(table: Table, phrases: Iterable[str]) -> Any:
    """The rowids of an FTS5 table matching every phrase (FTS5 query syntax)."""
    match = " AND ".join(phrases)
    return select(table.c.rowid.label("seq")).where(
        text(f"{table.name} MATCH :match_{table.name}").bindparams(**{f"match_{table.name}": match})
    )


def candidate_sources(session: Session, terms: tuple[str, ...]) -> list[Any]:
    """Return SELECTs of the ``seq`` of completions the indexes say may hold all ``terms``: one per index.

    Each is a superset of the matches (the exact test decides). The terms of one index are
    intersected inside it (one FTS5 query, one GIN scan); the trigrams and the grams are
    separate sources, so that the caller can drive a query by the smaller. Empty when
    no term is indexable (only short non-CJK terms).
    """
    plan = narrowing(terms)
    sources: list[Any] = []
    if session.get_bind().dialect.name == "sqlite":
        if plan.trigram_terms:
            sources.append(_fts_select(_fts_text, _text_phrases(plan.trigram_terms)))
        if plan.grams:
            sources.append(_fts_select(_fts_grams, _gram_phrases(plan.grams, _fts_grams)))
        return sources
    return [select(Completion.seq).where(condition) for condition in index_conditions(session, terms)]


# Per database (engine): whether its pg_trgm makes trigrams of CJK letters (see _trigrams_see_cjk).
_TRIGRAMS_SEE_CJK: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def _trigrams_see_cjk(session: Session) -> bool:
    """Return whether this PostgreSQL database's ``pg_trgm`` makes trigrams of CJK text.

    ``pg_trgm`` keeps only what the database's ``LC_CTYPE`` calls letters or digits: every
    script under ``C.UTF-8`` or ``en_US.UTF-8``, ASCII alone under the plain ``C`` locale.
    Asked once per engine (the ctype of a database never changes).
    """
    engine = session.get_bind().engine
    seen = _TRIGRAMS_SEE_CJK.get(engine)
    if seen is None:
        seen = bool(session.scalar(text("SELECT show_trgm('退款单') <> '{}'")))
        _TRIGRAMS_SEE_CJK[engine] = seen
    return seen


def index_conditions(session: Session, terms: tuple[str, ...]) -> list[Any]:
    """Return the PostgreSQL row conditions its GIN index serves for ``terms`` (empty on SQLite):
    one for the trigram terms (``LIKE``), one for the CJK grams (array containment). Both are
    columns of one index (migration 0010), so that PostgreSQL intersects them in one scan."""
    plan = narrowing(terms)
    if session.get_bind().dialect.name == "sqlite":
        return []
    conditions: list[Any] = []
    grams = plan.grams
    if plan.trigram_terms:
        conditions.append(and_(*(Completion.search_text.like(_like_pattern(t), escape="\\") for t in plan.trigram_terms)))
        if not _trigrams_see_cjk(session):
            # A ``C`` ctype leaves the trigram index blind to CJK text: a long term's CJK pairs narrow
            # instead (申请退款: 53 ms -> 1.2 ms at 10,000 rows). Other scripts stay unindexed there.
            grams = tuple(dict.fromkeys(grams + tuple(g for term in plan.trigram_terms for g in _term_grams(term))))
    if grams:
        # Written exactly as the migration's index expression, so that the GIN index serves it.
        words = func.string_to_array(Completion.search_grams, literal_column("' '"), type_=ARRAY(Text))
        conditions.append(words.contains(bindparam("grams", list(grams), type_=ARRAY(Text))))
    return conditions


# PostgreSQL's generated column of filter words (migration 0012): models.py does not describe it.
_FILTER_WORDS = literal_column("completions.filter_words", type_=ARRAY(Text))


def filter_words(session: Session, *, model: str | None, metadata: Mapping[str, str]) -> list[Any]:
    """Return the PostgreSQL row condition its GIN index serves for a model and metadata pairs
    beside a search (empty on SQLite, or with neither): the completion holds their filter words.

    The words are PostgreSQL's generated column ``filter_words``, the third column of the
    index that holds the trigrams and the gram words (migration 0012), so that the terms and
    the filters are intersected inside one scan. Each word decides its filter exactly
    (written as the migration's function writes it, so that none reads as another), so the
    callers need no other check of the model and the pairs.
    """
    if session.get_bind().dialect.name == "sqlite" or (model is None and not metadata):
        return []
    wanted = ([f"={model}"] if model is not None else []) + [f"{len(key)}:{key}{value}" for key, value in metadata.items()]
    return [_FILTER_WORDS.contains(bindparam("filter_words", wanted, type_=ARRAY(Text)))]


def indexed_matches(session: Session, terms: tuple[str, ...]) -> Any | None:
    """Return a SELECT of the ``seq`` of every live completion holding all ``terms``, decided by the
    SQLite indexes (and, for a term no index decides, the completion's text); None on PostgreSQL
    or when no term is indexable.

    The trigram table keeps positions (``detail=full``), so a term of three or more
    characters is a phrase of its trigrams: FTS5 matches it exactly where it occurs as a
    substring. A one- or two-character CJK term is itself a gram word: of the gram table,
    and, between spaces, of the trigram table's gram column. Any other term (one or two
    letters, not all CJK) is tested with ``instr`` on the completion's ``search_text``: the
    trigram table keeps no copy of the texts (migration 0013), so only those searches read the
    completions the indexes found.
    """
    plan = narrowing(terms)
    if session.get_bind().dialect.name != "sqlite" or not plan.indexed:
        return None
    if not plan.trigram_terms:
        matches = _fts_select(_fts_grams, _gram_phrases(plan.grams, _fts_grams))
    else:
        # Every term in one MATCH of the trigram table, its gram words included: FTS5 intersects the
        # posting lists as it reads them, skipping through the longer ones ("order 发票" at a million
        # rows: 88 ms when the gram table's matches were looked up for each trigram match, 22 ms).
        matches = _fts_select(_fts_text, [*_text_phrases(plan.trigram_terms), *_gram_phrases(plan.grams, _fts_text)])
    if not plan.undecided:
        return matches
    # An alias: the callers' own conditions on ``completions`` stay theirs (no correlation with this one).
    texts = aliased(Completion)
    checks = [func.instr(texts.search_text, bindparam(None, term, type_=String), type_=Integer) > 0 for term in plan.undecided]
    return join_driven(matches, texts, texts.seq == matches.selected_columns[0]).where(*checks)


class _DrivingJoin(Join):
    """An inner join whose left side drives: SQLite's ``CROSS JOIN ... ON``, a plain join elsewhere."""

    inherit_cache = True


@compiles(_DrivingJoin, "sqlite")
def _compile_driving_join(join: _DrivingJoin, compiler: Any, **kw: Any) -> str:
    sides = {**kw, "asfrom": True}
    return (
        f"{join.left._compiler_dispatch(compiler, **sides)} CROSS JOIN "
        f"{join.right._compiler_dispatch(compiler, **sides)} ON {join.onclause._compiler_dispatch(compiler, **kw)}"
    )


def join_driven(matches: Any, right: Any, onclause: Any) -> Any:
    """Return the SELECT ``matches`` (search matches: one FROM) inner-joined with ``right`` on
    ``onclause``, the matches the outer loop on SQLite whatever the statistics say: SQLite never
    reorders a ``CROSS JOIN``. A store starts without statistics (nothing runs ANALYZE), and
    then a plain join of the matches with a metadata pair was planned from the pair's side,
    running the search once per completion holding the pair (74 s for a capped count at a
    million rows)."""
    (left,) = matches.get_final_froms()
    return matches.select_from(_DrivingJoin(left, right, onclause))


# What PostgreSQL's index ``ix_completions_created_seq_search_text`` keeps of a completion (migration
# 0012: its search text and its filter words) must fit a B-tree entry, about 2,700 bytes at most:
# it keeps those whose text takes at most 1,800 bytes, and whose metadata (as JSON) and model
# together at most 600 (the words take no more than that JSON and the model).
SHORT_TEXT_BYTES = 1800
SHORT_FILTER_BYTES = 600


def short_text(*, short: bool) -> Any:
    """Return the row condition that a completion is one whose search text and filter words
    PostgreSQL's index ``ix_completions_created_seq_search_text`` keeps (``short``), or one too long
    for it (not ``short``: the index ``ix_completions_long_search_text`` holds those).

    Written exactly as the indexes' predicates (the numbers literals, not parameters), so
    that the planner proves an index holds every row the condition selects and counts them
    from the index alone; the long ones are read from their rows.
    """
    text_bytes = func.octet_length(Completion.search_text, type_=Integer)
    metadata_bytes = func.octet_length(func.coalesce(cast(Completion.metadata_map, Text), literal_column("''")), type_=Integer)
    text_limit = literal_column(str(SHORT_TEXT_BYTES), Integer)
    filter_bytes = metadata_bytes + func.octet_length(Completion.model, type_=Integer)
    filter_limit = literal_column(str(SHORT_FILTER_BYTES), Integer)
    if short:
        return and_(text_bytes <= text_limit, filter_bytes <= filter_limit)
    return or_(text_bytes > text_limit, filter_bytes > filter_limit)


def exact_match(session: Session, term: str) -> Any:
    """Return the row condition that decides whether a completion holds ``term`` (case-folded) exactly.

    Written so that no index can serve it: it is the final check, evaluated on rows the
    page already reads.
    """
    position = func.instr if session.get_bind().dialect.name == "sqlite" else func.strpos
    return position(Completion.search_text, bindparam(None, term, type_=String), type_=Integer) > 0


# --- Excerpts --------------------------------------------------------------------------------


_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Excerpt:
    """The text around the first match: ``before`` + ``match`` (to mark) + ``after``."""

    before: str
    match: str
    after: str


def excerpt(pieces: Iterable[str], terms: Iterable[str], *, width: int = 60) -> Excerpt | None:
    """Return the excerpt around the earliest occurrence of any of ``terms`` (case-folded) in ``pieces``.

    Case-folding can change a text's length (``ß`` → ``ss``), so each character is folded
    on its own and mapped back to where it stood. None when no term occurs.
    """
    terms = [term for term in terms if term]
    for piece in pieces:
        folded: list[str] = []
        origin: list[int] = []
        for index, char in enumerate(piece):
            for folded_char in fold(char):
                folded.append(folded_char)
                origin.append(index)
        haystack = "".join(folded)
        found = [(haystack.find(term), term) for term in terms]
        found = [(at, term) for at, term in found if at >= 0]
        if not found:
            continue
        at, term = min(found)
        start, end = origin[at], origin[at + len(term) - 1] + 1
        before = piece[max(0, start - width) : start]
        after = piece[end : end + width]
        # On one line: runs of whitespace (newlines in a message) read as one space.
        return Excerpt(
            before=("…" if start > width else "") + _SPACES.sub(" ", before).lstrip(),
            match=piece[start:end],
            after=_SPACES.sub(" ", after).rstrip() + ("…" if end + width < len(piece) else ""),
        )
    return None
