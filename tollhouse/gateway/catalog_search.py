"""Catalog search: BM25 over the live tools and agents, filtered to what the caller may see.

The index holds one document per live tool (its exposed name, its own name split into words, title,
description, its server's name, description and tags) and one per A2A agent (name, card name and
description, its skills' names, descriptions and tags). Names count three times, descriptions once.
Identifiers are split into words (`search_notes`, `getWeather`, `files-read`), then tokenized with
English stop words removed and Snowball stemming (bm25s with PyStemmer).

The index is rebuilt lazily, when the snapshot version or the set of agent cards changed since the
last query, never per query. Filtering (`keep_tool`, `keep_agent`) happens before ranking and
the limit, so a tool the caller may not see never shows up and never takes a slot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import bm25s
import numpy as np
import Stemmer

from tollhouse.gateway.pool import UpstreamPool
from tollhouse.gateway.snapshot import ExposedItem, Snapshot
from tollhouse.registry.models import JSONObject

__all__ = ["MAX_QUERY", "CatalogSearch", "Hit", "SearchError"]

MAX_QUERY = 500
MAX_LIMIT = 100
_NAME_WEIGHT = 3
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[_\-./:]+")

Kind = Literal["tool", "agent"]


class SearchError(ValueError):
    """A query that cannot be run: blank, too long, or a bad limit or kind."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result."""

    kind: Kind
    name: str  # the exposed tool name `server__tool`, or the agent's upstream name
    server: str  # the tool's server, or the agent name
    title: str | None
    description: str | None
    score: float
    item: ExposedItem | None  # the tool (None for an agent)

    def to_json(self) -> JSONObject:
        """The hit as the search APIs return it."""
        return {
            "kind": self.kind,
            "name": self.name,
            "server": self.server,
            "title": self.title,
            "description": self.description,
            "score": round(self.score, 4),
        }


def words(text: str) -> str:
    """Identifiers split into words: `getWeather_now` -> `get Weather now`."""
    return _CAMEL.sub(" ", _SEPARATORS.sub(" ", text))


@dataclass(frozen=True)
class _Doc:
    kind: Kind
    name: str
    server: str
    title: str | None
    description: str | None
    item: ExposedItem | None


@dataclass(frozen=True)
class _Index:
    key: tuple[Any, ...]
    docs: tuple[_Doc, ...]
    retriever: bm25s.BM25 | None


class CatalogSearch:
    """Ranks the live catalog's tools and agents for a query."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._stemmer = Stemmer.Stemmer("english")
        self._index: _Index | None = None

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot searches run over now (for callers' policy checks)."""
        return self._pool.snapshot

    def search(
        self,
        query: str,
        *,
        limit: int = 10,
        kinds: Collection[str] = ("tool", "agent"),
        keep_tool: Callable[[ExposedItem], bool] | None = None,
        keep_agent: Callable[[str], bool] | None = None,
    ) -> list[Hit]:
        """The best `limit` matches among the documents the `keep_*` functions accept, best first.

        Raises:
            SearchError: a blank or over-long query, a limit out of range, or an unknown kind.
        """
        _check(query, limit, kinds)
        index = self._current()
        if index.retriever is None:
            return []
        allowed = np.zeros(len(index.docs), dtype=np.float32)
        for i, doc in enumerate(index.docs):
            if doc.kind not in kinds:
                continue
            if doc.kind == "tool":
                assert doc.item is not None
                ok = keep_tool(doc.item) if keep_tool is not None else True
            else:
                ok = keep_agent(doc.name) if keep_agent is not None else True
            if ok:
                allowed[i] = 1.0
        if not allowed.any():
            return []
        ids = index.retriever.get_tokens_ids(self._words(words(query)))
        if not ids:
            return []  # nothing of the query is in the catalog's vocabulary
        scores = index.retriever.get_scores_from_ids(ids) * allowed
        # Best score first; ties by name, so results are deterministic.
        ranked = sorted(
            (i for i in np.flatnonzero(scores > 0)),
            key=lambda i: (-float(scores[i]), index.docs[i].name),
        )
        return [_hit(index.docs[i], float(scores[i])) for i in ranked[:limit]]

    def _current(self) -> _Index:
        snapshot = self._pool.snapshot
        agents = self._agents()
        key = (snapshot.version, tuple((name, id(card)) for name, card, _ in agents))
        index = self._index
        if index is None or index.key != key:
            index = self._index = self._build(key, snapshot, agents)
        return index

    def _agents(self) -> list[tuple[str, JSONObject, str | None]]:
        """(name, card, registry description) of every live A2A agent with a card."""
        found = []
        for upstream in self._pool.upstreams():
            if not upstream.is_agent or upstream.name not in self._pool.snapshot.live:
                continue
            catalog = self._pool.catalog(upstream.name)
            if catalog is not None and isinstance(catalog.card, dict):
                found.append((upstream.name, catalog.card, upstream.description))
        return found

    def _build(
        self,
        key: tuple[Any, ...],
        snapshot: Snapshot,
        agents: Sequence[tuple[str, JSONObject, str | None]],
    ) -> _Index:
        docs: list[_Doc] = []
        texts: list[str] = []
        for tool in snapshot.tools:
            definition = tool.upstream_definition
            title, description = _text(definition.get("title")), _text(definition.get("description"))
            upstream = self._pool.upstream(tool.server)
            server_text = " ".join(
                [
                    words(tool.server),
                    (upstream.description or "") if upstream is not None else "",
                    " ".join(upstream.tags) if upstream is not None else "",
                ]
            )
            names = " ".join([words(tool.name), title or ""])
            docs.append(_Doc("tool", tool.exposed, tool.server, title, description, tool))
            texts.append(" ".join([*([names] * _NAME_WEIGHT), description or "", server_text]))
        for name, card, registry_description in agents:
            skills = [s for s in card.get("skills", []) if isinstance(s, dict)]
            skill_names = " ".join(words(str(s.get("name") or s.get("id") or "")) for s in skills)
            skill_text = " ".join(
                " ".join([_text(s.get("description")) or "", " ".join(_strings(s.get("tags")))])
                for s in skills
            )
            card_name, description = _text(card.get("name")), _text(card.get("description"))
            names = " ".join([words(name), card_name or "", skill_names])
            docs.append(_Doc("agent", name, name, card_name, description or registry_description, None))
            texts.append(
                " ".join(
                    [*([names] * _NAME_WEIGHT), description or "", registry_description or "", skill_text]
                )
            )
        if not docs:
            return _Index(key, (), None)
        retriever = bm25s.BM25()
        corpus = bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)
        retriever.index(corpus, show_progress=False)
        return _Index(key, tuple(docs), retriever)

    def _words(self, text: str) -> list[str]:
        """A query's stemmed tokens, stop words removed."""
        (tokens,) = bm25s.tokenize(
            [text], stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False
        )
        return [str(t) for t in tokens]


def _check(query: str, limit: int, kinds: Collection[str]) -> None:
    if not isinstance(query, str) or not query.strip():
        raise SearchError("the query must be a non-empty string")
    if len(query) > MAX_QUERY:
        raise SearchError(f"the query is at most {MAX_QUERY} characters")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise SearchError(f"the limit is a whole number from 1 to {MAX_LIMIT}")
    unknown = set(kinds) - {"tool", "agent"}
    if unknown or not kinds:
        raise SearchError("kind is 'tool' or 'agent'")


def _hit(doc: _Doc, score: float) -> Hit:
    return Hit(doc.kind, doc.name, doc.server, doc.title, doc.description, score, doc.item)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
